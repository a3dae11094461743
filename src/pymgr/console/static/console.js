// pymgr console: live updates over server-sent events. No inline script anywhere (the CSP forbids it);
// every page works without this file, which only keeps open pages current.
(function () {
  "use strict";

  function each(selector, fn) { document.querySelectorAll(selector).forEach(fn); }

  function onProgress(data) {
    var pct = Math.max(0, Math.min(100, Number(data.progress) || 0));
    each('[data-progress-of="' + data.id + '"]', function (el) { el.value = pct; });
    each('[data-pct-of="' + data.id + '"]', function (el) { el.textContent = pct.toFixed(0) + " %"; });
    each('[data-message-of="' + data.id + '"]', function (el) { el.textContent = data.progress_message || ""; });
  }

  var FINAL = ["succeeded", "failed", "stopped", "timed_out", "lost"];

  // The same text as runview.duration_text on the server: change both.
  function formatDuration(seconds) {
    if (seconds < 60) { return seconds.toFixed(1) + " s"; }
    var whole = Math.floor(seconds);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    if (whole < 3600) { return Math.floor(whole / 60) + " min " + two(whole % 60) + " s"; }
    return Math.floor(whole / 3600) + " h " + two(Math.floor(whole % 3600 / 60)) + " min";
  }

  // A running run's duration counts on from what the server wrote (data-elapsed, seconds) when the
  // element appeared; the browser's clock is never compared with the server's.
  function tick() {
    var now = Date.now();
    each("[data-elapsed]", function (el) {
      if (!el.dataset.since) { el.dataset.since = String(now); }
      var seconds = Number(el.dataset.elapsed) + (now - Number(el.dataset.since)) / 1000;
      el.textContent = formatDuration(seconds);
    });
  }

  function onState(data) {
    if (FINAL.indexOf(data.state) >= 0) {
      each('[data-stop-of="' + data.id + '"]', function (el) { el.hidden = true; });
      each('[data-ending-of="' + data.id + '"]', function (el) { el.textContent = data.ending; });
    }
    each('[data-duration-of="' + data.id + '"]', function (el) {
      el.removeAttribute("data-since");
      if (data.elapsed === null) { el.removeAttribute("data-elapsed"); } else { el.dataset.elapsed = data.elapsed; }
      el.textContent = data.duration;
    });
    each('[data-state-of="' + data.id + '"]', function (el) {
      el.textContent = data.state;
      el.className = "badge state-" + data.state;
    });
    var rows = document.getElementById("task-rows");
    if (!rows) { return; }
    var template = document.createElement("template");
    template.innerHTML = data.row.trim();
    var row = template.content.firstElementChild;
    var old = document.getElementById("task-" + data.id);
    if (old) { old.replaceWith(row); } else if (rows.dataset.prepend) { rows.prepend(row); }
  }

  var LIVE = ["data-state-of", "data-progress-of", "data-pct-of", "data-message-of", "data-duration-of",
    "data-ending-of", "data-stop-of"];

  // The live parts of this page as a fresh copy of it has them: the table's rows whole, or each
  // element marked live (a Stop link the fresh copy no longer has is hidden).
  function refresh(fresh) {
    var rows = document.getElementById("task-rows");
    var freshRows = fresh.getElementById("task-rows");
    if (rows && freshRows) { rows.innerHTML = freshRows.innerHTML; return; }
    LIVE.forEach(function (attr) {
      each("[" + attr + "]", function (el) {
        var twin = fresh.querySelector("[" + attr + '="' + el.getAttribute(attr) + '"]');
        if (twin) { el.replaceWith(document.importNode(twin, true)); }
        else if (attr === "data-stop-of") { el.hidden = true; }
      });
    });
  }

  // Events sent before this page's stream opened never reach it, nor those the hub says it missed
  // (``gap``): once the stream is open (again, after a drop), and at each gap, the page is fetched
  // anew and its live parts copied over (the rest, a followed log among it, stays as it is); events
  // that arrive meanwhile wait and are applied after, in order, so the newest state is the one left.
  function watchEvents(root) {
    var source = new EventSource(root.getAttribute("data-live-events"));
    var waiting = null;
    var again = false;
    function handle(kind, data) {
      if (waiting) { waiting.push([kind, data]); return; }
      if (kind === "progress") { onProgress(data); } else { onState(data); }
    }
    function catchUp() {
      if (waiting) { again = true; return; }  // the copy under way may predate what was missed: one more
      waiting = [];
      fetch(window.location.href, { credentials: "same-origin", headers: { "accept": "text/html" } })
        .then(function (reply) { return reply.ok ? reply.text() : null; })
        .then(function (html) { if (html) { refresh(new DOMParser().parseFromString(html, "text/html")); } })
        .catch(function () { return null; })
        .then(function () {
          var held = waiting;
          waiting = null;
          held.forEach(function (e) { handle(e[0], e[1]); });
          if (again) { again = false; catchUp(); }
        });
    }
    source.addEventListener("open", catchUp);
    source.addEventListener("gap", catchUp);
    source.addEventListener("progress", function (e) { handle("progress", JSON.parse(e.data)); });
    source.addEventListener("state", function (e) { handle("state", JSON.parse(e.data)); });
  }

  function followLog(log) {
    var pause = document.getElementById("log-pause");
    var source = null;
    var offset = log.getAttribute("data-offset") || "0";
    function open() {
      source = new EventSource(log.getAttribute("data-log-url") + "?offset=" + encodeURIComponent(offset));
      source.addEventListener("log", function (e) {
        var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(document.createTextNode(e.data));
        offset = e.lastEventId;
        if (atEnd) { log.scrollTop = log.scrollHeight; }
      });
      source.addEventListener("end", function (e) {
        if (e.data) { log.append(document.createTextNode(e.data)); }
        source.close();
        if (pause) { pause.hidden = true; }
      });
      source.addEventListener("failed", function () { source.close(); });
    }
    if (pause) {
      pause.hidden = false;
      pause.addEventListener("click", function () {
        if (source && source.readyState !== EventSource.CLOSED) { source.close(); pause.textContent = "Resume"; }
        else { open(); pause.textContent = "Pause"; }
      });
    }
    open();
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    window.setInterval(tick, 1000);
    if (!window.EventSource) { return; }
    var live = document.querySelector("[data-live-events]");
    if (live) { watchEvents(live); }
    var log = document.getElementById("log");
    if (log) { followLog(log); }
  });
})();
