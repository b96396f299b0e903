"""The live web dashboard (`p2pfl dashboard`, `simulate --dashboard`) and the page `report --html` inlines.

`runs` reads run directories (read-only, incrementally, forgiving: a bad directory becomes a
message on the page); `server` serves the page and pushes updates (server-sent events); `static/`
holds the page and the vendored Apache ECharts. See docs/dashboard.md.
"""
