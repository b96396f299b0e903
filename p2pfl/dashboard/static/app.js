// p2pfl dashboard page. Data come from the server's event stream (live) or, in a report written by
// `p2pfl report --html`, from the JSON embedded in the page (no network at all). Every name, label
// and path from a run directory reaches the page as text (textContent, or escaped for ECharts
// tooltips): never as markup.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { runs: [], current: 0, view: "topology", metric: "test_acc", round: null, node: 0,
                  playing: null, updates: 0, lastUpdateMs: 0, charts: {} };
  window.p2pflDashboard = state; // for the tests and the benchmark: timings and what is shown

  // -- helpers ---------------------------------------------------------------------------------
  function esc(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined) return "-";
    if (typeof x !== "number") return String(x);
    if (digits === undefined) return String(x);
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e6)) return x.toExponential(digits - 1);
    return x.toFixed(digits);
  }
  function axis(v) {  // axis ticks: 0.2, 1, 10, 1e-4 (no trailing zeros)
    if (v === 0) return "0";
    if (Math.abs(v) < 1e-2 || Math.abs(v) >= 1e4) return v.toExponential(0);
    return String(parseFloat(v.toPrecision(3)));
  }
  const MiB = 1024 * 1024;
  function mean(xs) { return xs.reduce((a, b) => a + b, 0) / xs.length; }
  function std(xs) { const m = mean(xs); return Math.sqrt(mean(xs.map((x) => (x - m) * (x - m)))); }
  function td(row, text, value) {
    const c = el("td", text);
    if (value !== undefined) c.dataset.value = value === null ? "null" : String(value);
    row.appendChild(c);
    return c;
  }

  // -- the data model ----------------------------------------------------------------------------
  function newRun(snap) {
    const run = { facts: snap, byRound: new Map(), byNode: new Map(), maxRound: 0, rows: 0, agg: new Map() };
    addRows(run, snap.fields, snap.rows);
    return run;
  }
  function addRows(run, fields, rows) {
    run.fields = fields || run.fields;
    const f = run.fields;
    for (const row of rows) {
      const rec = {};
      for (let i = 0; i < f.length; i++) rec[f[i]] = row[i];
      if (!run.byRound.has(rec.round)) run.byRound.set(rec.round, new Map());
      run.byRound.get(rec.round).set(rec.node, rec);
      if (!run.byNode.has(rec.node)) run.byNode.set(rec.node, []);
      run.byNode.get(rec.node).push(rec);
      run.agg.delete(rec.round);
      if (rec.round > run.maxRound) run.maxRound = rec.round;
    }
    run.rows += rows.length;
  }
  function nodeCount(run) {
    const s = run.facts.summary, c = run.facts.config;
    return (s && s.nodes) || (c && c.nodes) || run.facts.nodes.length || run.byNode.size;
  }
  // The last round every node has reported (what "round N" means while a run goes on).
  function completeRound(run) {
    const n = nodeCount(run);
    for (let r = run.maxRound; r >= 1; r--) {
      const got = run.byRound.get(r);
      if (got && got.size >= n) return r;
    }
    return run.maxRound > 0 ? run.maxRound : 0;
  }
  function roundAgg(run, r) {
    if (run.agg.has(r)) return run.agg.get(r);
    const recs = Array.from((run.byRound.get(r) || new Map()).values());
    const pick = (k) => recs.map((x) => x[k]).filter((v) => typeof v === "number");
    const acc = pick("test_acc"), loss = pick("test_loss"), cons = pick("consensus_distance"), sent = pick("bytes_sent");
    const eps = pick("epsilon");
    const out = {
      acc: acc.length ? [mean(acc), std(acc)] : null, loss: loss.length ? [mean(loss), std(loss)] : null,
      consensus: cons.length ? cons[0] : null, mib: sent.length ? mean(sent) / MiB : null,
      eps: eps.length ? Math.max(...eps) : null, nodes: recs.length,
    };
    run.agg.set(r, out);
    return out;
  }
  function rounds(run) { return Array.from(run.byRound.keys()).sort((a, b) => a - b); }
  function cur() { return state.runs[state.current]; }

  // -- header, messages, tabs --------------------------------------------------------------------
  function renderHeader() {
    const sel = $("run-select");
    if (sel.options.length !== state.runs.length) {
      sel.textContent = "";
      state.runs.forEach((run, i) => sel.appendChild(el("option", run.facts.name, { value: String(i) })));
    }
    sel.value = String(state.current);
    const run = cur();
    if (!run) return;
    const status = $("run-status");
    status.textContent = run.facts.status;
    status.className = "pill " + run.facts.status;
    $("round-counter").textContent = String(completeRound(run));
    const total = (run.facts.summary && run.facts.summary.rounds) || (run.facts.config && run.facts.config.rounds);
    $("round-total").textContent = total ? String(total) : "?";
    const box = $("messages");
    box.textContent = "";
    state.runs.forEach((r) => {
      for (const m of r.facts.messages || []) box.appendChild(el("div", r.facts.name + ": " + m));
      if (r.facts.summary && r.facts.summary.failures)
        for (const m of r.facts.summary.failures) box.appendChild(el("div", r.facts.name + ": failed: " + m));
    });
    if (!state.runs.length) box.appendChild(el("div", "no runs given"));
  }
  function show(view) {
    state.view = view;
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === view);
    for (const s of document.querySelectorAll("main .view")) s.hidden = s.id !== "view-" + view;
    render();
  }

  // -- topology -----------------------------------------------------------------------------------
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function ramp(t) {
    t = Math.min(1, Math.max(0, t));
    const x = t * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
    const c = VIRIDIS[i].map((v, k) => Math.round(v + f * (VIRIDIS[i + 1][k] - v)));
    return "rgb(" + c.join(",") + ")";
  }
  const UPDOWN = { up: "rgb(47,158,68)", "sat out": "rgb(245,159,0)", down: "rgb(201,42,42)" };
  // Accuracy on a fixed 0..1 scale; the others over the nodes of the round shown, so that the node
  // farthest from consensus (or with the highest loss, or the most epsilon spent) stands out in
  // every round, not only in the worst one of the run (the legend says the range).
  function metricDomain(run, metric, r) {
    if (metric === "test_acc") return [0, 1, false];
    let lo = Infinity, hi = -Infinity;
    for (const rec of (run.byRound.get(r) || new Map()).values()) {
      const v = rec[metric];
      if (typeof v === "number" && isFinite(v) && (metric !== "node_distance" || v > 0)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
    if (lo === Infinity) return null;
    return [lo, hi, metric === "node_distance"];
  }
  function colourOf(value, dom) {
    if (typeof value !== "number" || !dom) return "rgb(206,212,218)";
    let [lo, hi, log] = dom;
    if (log) { value = Math.log10(Math.max(value, lo)); lo = Math.log10(lo); hi = Math.log10(hi); }
    return ramp(hi > lo ? (value - lo) / (hi - lo) : 0.5);
  }
  function nodeState(run, r, id) {
    const rec = (run.byRound.get(r) || new Map()).get(id);
    if (!rec) return ["down", null];
    return [rec.participated ? "up" : "sat out", rec];
  }
  function shownRound(run) {
    const last = completeRound(run);
    if (state.round === null || state.round > run.maxRound) return last;
    return state.round;
  }
  function buildGraph(run) {
    const svg = $("graph"), nodesG = $("nodes"), edgesG = $("edges");
    const key = run.facts.name + "|" + run.facts.nodes.length + "|" + run.facts.edges.length;
    if (svg.dataset.key === key) return;
    svg.dataset.key = key;
    nodesG.textContent = "";
    edgesG.textContent = "";
    const pos = new Map(run.facts.nodes.map((n) => [n.id, n]));
    const n = Math.max(1, run.facts.nodes.length);
    const radius = Math.max(0.008, Math.min(0.06, 0.9 / Math.sqrt(n) / 2.2));
    svg.dataset.radius = String(radius);
    const NS = "http://www.w3.org/2000/svg";
    for (const [a, b] of run.facts.edges) {
      const pa = pos.get(a), pb = pos.get(b);
      if (!pa || !pb) continue;
      const line = document.createElementNS(NS, "line");
      line.setAttribute("class", "edge");
      line.setAttribute("x1", pa.x); line.setAttribute("y1", pa.y); line.setAttribute("x2", pb.x); line.setAttribute("y2", pb.y);
      line.dataset.a = String(a); line.dataset.b = String(b);
      line.appendChild(document.createElementNS(NS, "title"));
      edgesG.appendChild(line);
    }
    for (const node of run.facts.nodes) {
      const c = document.createElementNS(NS, "circle");
      c.setAttribute("class", "node");
      c.setAttribute("cx", node.x); c.setAttribute("cy", node.y); c.setAttribute("r", radius);
      c.setAttribute("stroke-width", radius / 5);
      c.dataset.node = String(node.id);
      c.appendChild(document.createElementNS(NS, "title"));
      nodesG.appendChild(c);
    }
  }
  function linkTotals(run, r) {
    // per undirected edge "a-b": [bytes both ways (sent by each end), drops on both ends] up to round r
    const out = new Map();
    for (const id of run.byNode.keys()) {
      let rec = null;
      for (const x of run.byNode.get(id)) if (x.round <= r && (!rec || x.round > rec.round)) rec = x;
      if (!rec || !rec.links) continue;
      for (const j in rec.links) {
        const a = Math.min(id, +j), b = Math.max(id, +j), k = a + "-" + b;
        const v = out.get(k) || [0, 0];
        v[0] += rec.links[j][0];
        v[1] += rec.links[j][2];
        out.set(k, v);
      }
    }
    return out;
  }
  function renderTopology() {
    const run = cur();
    if (!run) return;
    buildGraph(run);
    const r = shownRound(run);
    const metric = state.metric;
    const scr = $("scrubber");
    scr.max = String(Math.max(1, run.maxRound));
    scr.value = String(r || 1);
    $("scrub-round").textContent = r ? String(r) : "-";
    const svg = $("graph");
    svg.dataset.round = String(r);
    const dom = metric === "updown" ? null : metricDomain(run, metric, r);
    for (const c of $("nodes").children) {
      const id = +c.dataset.node;
      const [st, rec] = nodeState(run, r, id);
      let value = null, colour;
      if (metric === "updown") { value = st; colour = UPDOWN[st]; }
      else { value = rec ? rec[metric] : null; colour = colourOf(value, dom); }
      c.setAttribute("fill", colour);
      c.dataset.value = value === null || value === undefined ? "null" : String(value);
      c.classList.toggle("selected", id === state.node);
      c.firstChild.textContent = "node " + id + " (" + st + ")\n" + (rec ?
        "accuracy " + fmt(rec.test_acc, 4) + "\ntest loss " + fmt(rec.test_loss, 4) + "\ndistance " + fmt(rec.node_distance, 3) +
        "\nepsilon " + fmt(rec.epsilon, 3) + "\narrived " + rec.arrived : "no record for round " + r);
    }
    const totals = linkTotals(run, r);
    let maxBytes = 1;
    for (const v of totals.values()) maxBytes = Math.max(maxBytes, v[0]);
    const radius = +svg.dataset.radius;
    for (const line of $("edges").children) {
      const k = line.dataset.a + "-" + line.dataset.b, v = totals.get(k) || [0, 0];
      line.setAttribute("stroke-width", String(radius * (0.15 + 0.85 * v[0] / maxBytes)));
      line.classList.toggle("dropped", v[1] > 0);
      line.dataset.bytes = String(v[0]);
      line.dataset.dropped = String(v[1]);
      line.firstChild.textContent = "link " + line.dataset.a + " - " + line.dataset.b + ": " + fmt(v[0] / MiB, 3) +
        " MiB, " + v[1] + " dropped";
    }
    const names = { test_acc: "accuracy", test_loss: "test loss", node_distance: "distance to the average model (log)",
                    epsilon: "epsilon spent", updown: "down / up / sat out" };
    $("legend-title").textContent = names[metric] + (r ? " at round " + r : "") +
      (metric === "test_acc" || metric === "updown" ? "" : " (range of this round)");
    $("legend-bar").className = metric === "updown" ? "updown" : "grad";
    $("legend-lo").textContent = metric === "updown" ? "up" : dom ? fmt(dom[0], 3) : "no data";
    $("legend-hi").textContent = metric === "updown" ? "down" : dom ? fmt(dom[1], 3) : "";
  }
  function setupGraphInteraction() {
    const svg = $("graph"), vp = $("viewport");
    let view = { x: 0, y: 0, k: 1 }, drag = null;
    const apply = () => vp.setAttribute("transform", "translate(" + view.x + " " + view.y + ") scale(" + view.k + ")");
    svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const f = ev.deltaY < 0 ? 1.2 : 1 / 1.2;
      view.k = Math.min(40, Math.max(0.5, view.k * f));
      apply();
    }, { passive: false });
    svg.addEventListener("mousedown", (ev) => { if (!ev.target.dataset.node) drag = [ev.clientX, ev.clientY, view.x, view.y]; });
    window.addEventListener("mouseup", () => { drag = null; });
    svg.addEventListener("mousemove", (ev) => {
      if (drag) {
        const s = 2.3 / svg.clientHeight;
        view.x = drag[2] + (ev.clientX - drag[0]) * s; view.y = drag[3] + (ev.clientY - drag[1]) * s;
        apply();
      }
      const t = ev.target;
      $("hover-info").textContent = t.firstChild && t.firstChild.textContent ? t.firstChild.textContent : "";
    });
    svg.addEventListener("click", (ev) => {
      const id = ev.target.dataset ? ev.target.dataset.node : undefined;
      if (id === undefined) return;
      state.node = +id;
      show("node");
    });
  }

  // -- curves -------------------------------------------------------------------------------------
  function chart(id) {
    if (!state.charts[id]) state.charts[id] = echarts.init($(id), null, { renderer: "canvas" });
    return state.charts[id];
  }
  const TIP = { trigger: "item", confine: true, className: "echarts-tip",
                formatter: (p) => esc(p.seriesName) + "\n" + esc(Array.isArray(p.value) ? p.value.map((v) => fmt(v, 4)).join(", ") : p.value) };
  function curveOption(title, run, key, xKey, log, perNodeKey) {
    const rs = rounds(run), xs = [];
    const mid = [], lo = [], band = [];
    for (const r of rs) {
      const a = roundAgg(run, r), x = xKey === "round" ? r : a.mib;
      const v = a[key];
      if (v === null || x === null) continue;
      const [m, s] = Array.isArray(v) ? v : [v, 0];
      xs.push(x); mid.push([x, m]); lo.push([x, m - s]); band.push([x, 2 * s]);
    }
    const series = [];
    const ids = Array.from(run.byNode.keys()).sort((a, b) => a - b);
    if (perNodeKey && ids.length <= 64) {
      for (const id of ids) {
        const pts = run.byNode.get(id).filter((x) => typeof x[perNodeKey] === "number").sort((a, b) => a.round - b.round)
          .map((x) => [xKey === "round" ? x.round : x.bytes_sent / MiB, x[perNodeKey]]);
        series.push({ name: "node " + id, type: "line", data: pts, showSymbol: false, lineStyle: { width: 0.7, color: "#adb5bd" },
                      itemStyle: { color: "#adb5bd" }, emphasis: { focus: "series", lineStyle: { width: 2, color: "#e8590c" } }, z: 1 });
      }
    }
    if (!log) {
      series.push({ name: "lower", type: "line", data: lo, stack: "band", showSymbol: false, lineStyle: { opacity: 0 }, silent: true, z: 2 });
      series.push({ name: "spread", type: "line", data: band, stack: "band", showSymbol: false, lineStyle: { opacity: 0 },
                    areaStyle: { color: "rgba(51,102,204,0.22)" }, silent: true, z: 2 });
    }
    series.push({ name: "mean", type: "line", data: mid, showSymbol: mid.length < 60, lineStyle: { width: 2.5, color: "#1c4fb8" },
                  itemStyle: { color: "#1c4fb8" }, z: 3 });
    return {
      animation: false, title: { text: title, left: 10, top: 6, textStyle: { fontSize: 14 } },
      grid: { left: 64, right: 20, top: 40, bottom: 44 }, tooltip: TIP,
      xAxis: { type: "value", name: xKey === "round" ? "round" : "MiB sent per node", nameLocation: "middle", nameGap: 28,
               min: "dataMin", max: "dataMax" },
      yAxis: { type: log ? "log" : "value", scale: !log, name: "", axisLabel: { formatter: axis } },
      series,
    };
  }
  function renderCurves() {
    const run = cur();
    if (!run) return;
    const x = $("xaxis").value;
    chart("chart-acc").setOption(curveOption("Test accuracy", run, "acc", x, false, "test_acc"), true);
    chart("chart-loss").setOption(curveOption("Test loss", run, "loss", x, false, "test_loss"), true);
    chart("chart-consensus").setOption(curveOption("Consensus distance (log)", run,
                                                   "consensus", x, true, null), true);
  }

  // -- node drill-down ----------------------------------------------------------------------------
  function renderNode() {
    const run = cur();
    if (!run) return;
    const sel = $("node-select"), ids = Array.from(new Set([...run.facts.nodes.map((n) => n.id), ...run.byNode.keys()])).sort((a, b) => a - b);
    if (sel.options.length !== ids.length) {
      sel.textContent = "";
      for (const id of ids) sel.appendChild(el("option", "node " + id, { value: String(id) }));
    }
    if (!ids.includes(state.node) && ids.length) state.node = ids[0];
    sel.value = String(state.node);
    const recs = (run.byNode.get(state.node) || []).slice().sort((a, b) => a.round - b.round);
    const last = recs[recs.length - 1];
    $("node-title").textContent = "node " + state.node + ": " + recs.length + " rounds recorded" +
      (last ? ", last accuracy " + fmt(last.test_acc, 4) : "");
    const body = $("node-table").tBodies[0];
    body.textContent = "";
    for (const x of recs) {
      const tr = el("tr");
      tr.dataset.round = String(x.round);
      td(tr, x.round, x.round);
      td(tr, fmt(x.test_acc, 4), x.test_acc); td(tr, fmt(x.test_loss, 4), x.test_loss); td(tr, fmt(x.train_loss, 4), x.train_loss);
      td(tr, fmt(x.node_distance, 3), x.node_distance); td(tr, fmt(x.epsilon, 4), x.epsilon);
      td(tr, x.bytes_sent, x.bytes_sent); td(tr, x.bytes_received, x.bytes_received); td(tr, x.arrived, x.arrived);
      const drops = Object.keys(x.dropped).sort().map((k) => k + ": " + x.dropped[k]).join(", ");
      td(tr, drops || "0", JSON.stringify(x.dropped)); td(tr, x.aggregation, x.aggregation); td(tr, fmt(x.round_time, 3), x.round_time);
      body.appendChild(tr);
    }
    const drops = $("node-drops").tBodies[0];
    drops.textContent = "";
    if (last) for (const k of Object.keys(last.dropped).sort()) {
      const tr = el("tr"); tr.dataset.reason = k; td(tr, k); td(tr, last.dropped[k], last.dropped[k]); drops.appendChild(tr);
    }
    if (!drops.children.length) { const tr = el("tr"); td(tr, "none"); td(tr, 0); drops.appendChild(tr); }
    const links = $("node-links").tBodies[0];
    links.textContent = "";
    if (last && last.links) for (const j of Object.keys(last.links).sort((a, b) => a - b)) {
      const v = last.links[j], tr = el("tr");
      tr.dataset.neighbour = j; td(tr, "node " + j); td(tr, v[0], v[0]); td(tr, v[1], v[1]); td(tr, v[2], v[2]); links.appendChild(tr);
    }
    const outcomes = new Map();
    for (const x of recs) outcomes.set(x.aggregation, (outcomes.get(x.aggregation) || 0) + 1);
    const ob = $("node-outcomes").tBodies[0];
    ob.textContent = "";
    for (const [k, v] of outcomes) { const tr = el("tr"); td(tr, k); td(tr, v, v); ob.appendChild(tr); }
    const acc = recs.filter((x) => typeof x.test_acc === "number").map((x) => [x.round, x.test_acc]);
    const eps = recs.filter((x) => typeof x.epsilon === "number").map((x) => [x.round, x.epsilon]);
    const series = [{ name: "accuracy", type: "line", data: acc, yAxisIndex: 0 }];
    if (eps.length) series.push({ name: "epsilon", type: "line", data: eps, yAxisIndex: 1 });
    chart("chart-node").setOption({
      animation: false, title: { text: "node " + state.node, left: 10, top: 6, textStyle: { fontSize: 14 } }, tooltip: TIP,
      legend: { top: 6, right: 10 }, grid: { left: 56, right: 56, top: 40, bottom: 40 },
      xAxis: { type: "value", name: "round", nameLocation: "middle", nameGap: 26, min: "dataMin", max: "dataMax" },
      yAxis: [{ type: "value", min: 0, max: 1 }, { type: "value", show: eps.length > 0 }],
      series,
    }, true);
  }

  // -- comparison ----------------------------------------------------------------------------------
  const PALETTE = ["#1c4fb8", "#e8590c", "#2f9e44", "#ae3ec9", "#c92a2a", "#0c8599", "#5c940d", "#d6336c", "#495057", "#f08c00"];
  function renderCompare() {
    const body = $("compare-table").tBodies[0];
    body.textContent = "";
    const acc = [], bytes = [], cons = [];
    state.runs.forEach((run, i) => {
      const f = run.facts, s = f.summary || {}, c = f.config || {};
      const last = completeRound(run), a = last ? roundAgg(run, last) : null;
      const tr = el("tr");
      tr.dataset.run = String(i);
      td(tr, f.name); td(tr, s.topology || c.topology || "-"); td(tr, nodeCount(run)); td(tr, last + " / " + (s.rounds || c.rounds || "?"));
      td(tr, a && a.acc ? fmt(a.acc[0], 4) + " \u00b1 " + fmt(a.acc[1], 4) : "-", a && a.acc ? a.acc[0] : null);
      td(tr, a && a.mib !== null ? fmt(a.mib, 3) : "-"); td(tr, a ? fmt(a.consensus, 3) : "-"); td(tr, a ? fmt(a.eps, 3) : "-");
      td(tr, s.wall_time !== undefined && s.wall_time !== null ? fmt(s.wall_time, 1) : "-"); td(tr, f.status);
      body.appendChild(tr);
      const colour = PALETTE[i % PALETTE.length];
      const rs = rounds(run).map((r) => [r, roundAgg(run, r)]);
      const line = (data) => ({ name: f.name, type: "line", data, showSymbol: false, lineStyle: { width: 2, color: colour }, itemStyle: { color: colour } });
      acc.push(line(rs.filter(([, x]) => x.acc).map(([r, x]) => [r, x.acc[0]])));
      bytes.push(line(rs.filter(([, x]) => x.acc && x.mib !== null).map(([, x]) => [x.mib, x.acc[0]])));
      cons.push(line(rs.filter(([, x]) => x.consensus > 0).map(([r, x]) => [r, x.consensus])));
    });
    const opt = (title, xname, series, log) => ({
      animation: false, title: { text: title, left: 10, top: 6, textStyle: { fontSize: 14 } }, tooltip: TIP,
      legend: { type: "scroll", bottom: 0 }, grid: { left: 64, right: 20, top: 40, bottom: 64 },
      xAxis: { type: "value", name: xname, nameLocation: "middle", nameGap: 24, min: "dataMin", max: "dataMax" },
      yAxis: { type: log ? "log" : "value", scale: !log, axisLabel: { formatter: axis } }, series,
    });
    chart("cmp-acc").setOption(opt("Mean accuracy per round", "round", acc, false), true);
    chart("cmp-bytes").setOption(opt("Mean accuracy vs MiB sent per node", "MiB sent per node", bytes, false), true);
    chart("cmp-consensus").setOption(opt("Consensus distance per round (log)", "round", cons, true), true);
  }

  function renderSummary() {
    const run = cur();
    const body = $("summary-table").tBodies[0];
    body.textContent = "";
    if (!run) return;
    const rows = [["name", run.facts.name], ["directories", run.facts.paths.join("\n")], ["status", run.facts.status]];
    const s = run.facts.summary || {}, c = run.facts.config || {};
    for (const k of Object.keys(s)) if (k !== "failures") rows.push([k, s[k]]);
    for (const k of Object.keys(c)) if (!(k in s)) rows.push(["config." + k, c[k]]);
    for (const [k, v] of rows) {
      const tr = el("tr"); tr.dataset.key = k; td(tr, k); td(tr, v === null ? "-" : typeof v === "number" ? fmt(v) : v); body.appendChild(tr);
    }
  }

  function render() {
    const t0 = performance.now();
    renderHeader();
    if (state.view === "topology") renderTopology();
    else if (state.view === "curves") renderCurves();
    else if (state.view === "node") renderNode();
    else if (state.view === "compare") renderCompare();
    else renderSummary();
    state.lastRenderMs = performance.now() - t0;
  }
  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }

  // -- wiring ---------------------------------------------------------------------------------------
  function setup() {
    for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.view));
    $("run-select").addEventListener("change", (e) => { state.current = +e.target.value; state.round = null; $("follow").checked = true; render(); });
    $("metric").addEventListener("change", (e) => { state.metric = e.target.value; render(); });
    $("xaxis").addEventListener("change", render);
    $("node-select").addEventListener("change", (e) => { state.node = +e.target.value; render(); });
    $("scrubber").addEventListener("input", (e) => { state.round = +e.target.value; $("follow").checked = false; render(); });
    $("follow").addEventListener("change", (e) => { if (e.target.checked) state.round = null; render(); });
    $("play").addEventListener("click", () => {
      if (state.playing) { clearInterval(state.playing); state.playing = null; $("play").textContent = "\u25b6 replay"; return; }
      const run = cur();
      if (!run) return;
      state.round = 1; $("follow").checked = false;
      $("play").textContent = "\u25a0 stop";
      state.playing = setInterval(() => {
        if (state.round >= run.maxRound) { clearInterval(state.playing); state.playing = null; $("play").textContent = "\u25b6 replay"; return; }
        state.round += 1; render();
      }, 400);
      render();
    });
    window.addEventListener("resize", () => { for (const k in state.charts) state.charts[k].resize(); });
    setupGraphInteraction();
  }
  function ready() {
    document.body.dataset.ready = "1";
    state.loadMs = performance.now();
  }
  function live() {
    const conn = $("conn");
    const source = new EventSource("api/events");
    source.addEventListener("open", () => { conn.textContent = "connected: live updates"; });
    source.addEventListener("error", () => { conn.textContent = "disconnected: retrying"; });
    source.addEventListener("snapshot", (ev) => {
      const d = JSON.parse(ev.data);
      state.runs[d.run] = newRun(d);
      scheduleRender();
    });
    source.addEventListener("ready", () => { render(); ready(); });
    source.addEventListener("rows", (ev) => {
      const t0 = performance.now();
      const d = JSON.parse(ev.data), run = state.runs[d.run];
      if (!run) return;
      const rows = d.rows;
      delete d.rows;
      Object.assign(run.facts, d);
      addRows(run, null, rows);
      state.updates += 1;
      render();
      state.lastUpdateMs = performance.now() - t0;
    });
  }
  function embedded() {
    const data = JSON.parse($("p2pfl-data").textContent);
    state.runs = data.runs.map(newRun);
    $("conn").textContent = "report written " + data.written;
    $("follow").parentNode.hidden = true;  // nothing is live in a report
    render();
    ready();
  }
  setup();
  if ($("p2pfl-data")) embedded(); else live();
})();
