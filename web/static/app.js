// The only script: keeps the home page's counts, the clustering progress and the indexing
// progress up to date. Every page works without it.
(function () {
  "use strict";
  var counts = document.querySelector("[data-stat]");
  if (!counts) return;
  function json(url) {
    return fetch(url, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; });
  }
  function refresh() {
    json("/api/status")
      .then(function (status) {
        if (!status) return;
        document.querySelectorAll("[data-stat]").forEach(function (el) {
          var value = status[el.getAttribute("data-stat")];
          if (value !== undefined) el.textContent = value;
        });
        var bar = document.querySelector("[data-progress]");
        if (bar) { bar.max = status.faces_to_do || 1; bar.value = status.faces_done; }
      })
      .catch(function () {});
    var indexing = document.querySelector("[data-indexing]");
    if (!indexing) return;
    json("/progress")
      .then(function (progress) { if (progress) indexing.textContent = progress.summary; })
      .catch(function () {});
  }
  setInterval(refresh, 3000);
})();
