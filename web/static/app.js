// The only script: keeps the home page's counts and the clustering progress up to date.
// Every page works without it.
(function () {
  "use strict";
  var counts = document.querySelector("[data-stat]");
  if (!counts) return;
  function refresh() {
    fetch("/api/status", { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
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
  }
  setInterval(refresh, 3000);
})();
