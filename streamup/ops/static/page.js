// The status page's live updates: poll /status and /throughput, rebuild the rows and figures.
// Values reach the page only through textContent, element properties and numbers: file names,
// paths and errors are user input, and nothing from the server is ever parsed as markup.
// The server renders the same page (streamup/ops/page.py), so formats here follow that module.
"use strict";
(function () {
  const pollMs = Number(document.body.dataset.pollMs) || 2000;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const CHART_WIDTH = 480;
  const CHART_HEIGHT = 60;

  // Python's format() rounds an exact tie to even (1.25 -> "1.2"); toFixed() rounds it up.
  function fixed(value, digits) {
    const scaled = value * 10 ** digits;
    if (Number.isInteger(scaled * 2) && !Number.isInteger(scaled)) {
      const down = Math.floor(scaled);
      return ((down % 2 === 0 ? down : down + 1) / 10 ** digits).toFixed(digits);
    }
    return value.toFixed(digits);
  }

  function humanSize(n) {
    let value = typeof n === "number" && isFinite(n) ? n : 0;
    for (const unit of units) {
      if (value < 1024 || unit === "TiB") {
        return unit === "B" ? `${fixed(value, 0)} B` : `${fixed(value, 1)} ${unit}`;
      }
      value /= 1024;
    }
    return String(n);
  }
  const rate = (n) => `${humanSize(n)}/s`;
  const int = (v) => (Number.isInteger(v) ? v : 0);
  const text = (v) => (v === null || v === undefined ? "" : String(v));
  const fileName = (path) => text(path).split("/").pop();
  const isoUtc = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?\+00:00$/;
  const shortTime = (v) => {
    const found = isoUtc.exec(text(v));
    return found ? `${found[1]} ${found[2]}` : text(v);
  };
  const percent = (uploaded, size) => (size > 0 ? `${Math.floor((100 * uploaded) / size)}%` : "0%");

  function el(tag, className, content) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function setText(id, value) {
    const node = document.getElementById(id);
    if (node) node.textContent = value;
  }

  function nameCell(path) {
    const cell = el("td", "name", fileName(path));
    cell.title = text(path);
    return cell;
  }

  function streamRow(row, rateBytes) {
    const uploaded = int(row.uploaded_bytes);
    const size = Math.max(int(row.size_bytes), uploaded);
    const tr = el("tr");
    tr.dataset.streamId = text(row.stream_id);
    const state = el("td", "state", text(row.state));
    if (row.stalled) state.append(" ", el("span", "badge", "stalled"));
    const progress = el("td", "progress");
    const bar = el("progress");
    bar.max = size || 1;
    bar.value = uploaded;
    progress.append(bar, " ", el("span", "pct", percent(uploaded, size)));
    tr.append(
      nameCell(row.path),
      state,
      el("td", "bytes", `${humanSize(uploaded)} / ${humanSize(size)}`),
      progress,
      el("td", "rate", typeof rateBytes === "number" ? rate(rateBytes) : ""),
      el("td", "lag", humanSize(row.lag_bytes)),
      el("td", "parts", String(int(row.parts))),
      el("td", "owner", text(row.owner)),
      el("td", "error", text(row.error)),
    );
    return tr;
  }

  function completionRow(row) {
    const tr = el("tr");
    tr.dataset.streamId = text(row.stream_id);
    const key = el("td", "key");
    key.append(el("code", "", text(row.key)));
    const meta = el("td", "meta");
    if (row.state === "completed") {
      const link = el("a", "", "metadata");
      link.href = "metadata/" + encodeURIComponent(text(row.stream_id));
      meta.append(link);
    }
    tr.append(
      nameCell(row.path),
      el("td", "state", `${text(row.state)} (${text(row.end_reason)})`),
      el("td", "size", humanSize(row.size_bytes)),
      el("td", "when", shortTime(row.completed_at_utc)),
      key,
      meta,
    );
    return tr;
  }

  function chartPoints(history, capacity) {
    const values = history.slice(-capacity);
    if (!values.length) return "";
    const top = Math.max(Math.max(...values), 1);
    const step = CHART_WIDTH / Math.max(capacity - 1, 1);
    const start = capacity - values.length;
    return values
      .map((v, i) => {
        const x = (start + i) * step;
        const y = CHART_HEIGHT - 1 - (v / top) * (CHART_HEIGHT - 2);
        return `${fixed(x, 1)},${fixed(y, 1)}`;
      })
      .join(" ");
  }

  function figure(value, size) {
    if (value === null || value === undefined) return "not reported";
    return size ? humanSize(value) : String(value);
  }

  // BANDWIDTH_LIMIT now and its next change (the agent's local time), as page.py shows them.
  const perSecond = (limit) =>
    limit === null || limit === undefined || limit === "off" ? "off" : `${limit}/s`;
  function bandwidth(section) {
    if (!section || typeof section !== "object" || Array.isArray(section)) {
      return ["not reported", ""];
    }
    const at = section.next_change_at;
    const when = text(at).replaceAll("T", " ");
    const then = at ? `then ${perSecond(section.next_limit)} from ${when}` : "";
    return [perSecond(section.limit), then];
  }

  function show(doc, throughput) {
    const streams = Array.isArray(doc.streams) ? doc.streams : [];
    const completions = Array.isArray(doc.recent_completions) ? doc.recent_completions : [];
    const rates = throughput.streams || {};
    setText("agent-id", text(doc.agent_id));
    setText("store", text(doc.store));
    const storeError = document.getElementById("store-error");
    storeError.hidden = !doc.store_error;
    setText("store-error-text", text(doc.store_error));

    document.querySelector("#streams tbody").replaceChildren(
      ...streams.map((row) => streamRow(row, rates[row.stream_id])),
    );
    document.getElementById("no-streams").hidden = streams.length > 0;
    document.querySelector("#completions tbody").replaceChildren(...completions.map(completionRow));
    document.getElementById("no-completions").hidden = completions.length > 0;

    setText("fig-rate", rate(throughput.rate_bytes_s || 0));
    setText("fig-peak", rate(throughput.peak_bytes_s || 0));
    setText("fig-streams", String(streams.length));
    setText("fig-stalled", String(streams.filter((s) => s.stalled).length));
    setText("fig-lag", humanSize(streams.reduce((sum, s) => sum + int(s.lag_bytes), 0)));
    const [limit, then] = bandwidth(doc.bandwidth);
    setText("fig-bandwidth", limit);
    setText("fig-bandwidth-next", then);
    setText("fig-free-disk", figure(doc.free_disk_bytes, true));
    setText("fig-undelivered", figure(doc.undelivered_events, false));

    const capacity = int(throughput.capacity) || 2;
    const history = Array.isArray(throughput.history_bytes_s) ? throughput.history_bytes_s : [];
    document.getElementById("chart-line").setAttribute("points", chartPoints(history, capacity));
    setText("chart-minutes", String((capacity * (throughput.interval_s || 1)) / 60));
  }

  function setLive(ok, message) {
    const live = document.getElementById("live");
    live.className = ok ? "live ok" : "live down";
    live.textContent = message;
  }

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (response.status === 401) throw new Error("not authorised: open the page with ?token=…");
    if (!response.ok) throw new Error(`${path} answered ${response.status}`);
    return response.json();
  }

  async function poll() {
    try {
      const [doc, throughput] = await Promise.all([getJson("status"), getJson("throughput")]);
      show(doc, throughput);
      setLive(true, `live · updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      setLive(false, `live updates paused: ${error.message}; retrying`);
    } finally {
      window.setTimeout(poll, pollMs);
    }
  }

  // The formats, for the browser test that holds them equal to the server's (page.py).
  window.streamupFormats = Object.freeze({ humanSize, percent, shortTime, chartPoints, bandwidth });
  poll();
})();
