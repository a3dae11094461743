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

  function onState(data) {
    if (FINAL.indexOf(data.state) >= 0) {
      each('[data-stop-of="' + data.id + '"]', function (el) { el.hidden = true; });
    }
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

  function watchEvents(root) {
    var source = new EventSource(root.getAttribute("data-live-events"));
    source.addEventListener("progress", function (e) { onProgress(JSON.parse(e.data)); });
    source.addEventListener("state", function (e) { onState(JSON.parse(e.data)); });
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
    if (!window.EventSource) { return; }
    var live = document.querySelector("[data-live-events]");
    if (live) { watchEvents(live); }
    var log = document.getElementById("log");
    if (log) { followLog(log); }
  });
})();
