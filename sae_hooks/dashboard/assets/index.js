// Sorting and filtering of the latent index, in the page: no server, no network.
(function () {
  "use strict";
  var table = document.getElementById("latents");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var text = document.getElementById("filter");
  var minDensity = document.getElementById("min-density");
  var maxDensity = document.getElementById("max-density");
  var shown = document.getElementById("shown");

  function cellValue(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.getAttribute("data-v");
    if (raw === null) { raw = cell.textContent; }
    return numeric ? parseFloat(raw) : raw.toLowerCase();
  }

  function applyFilter() {
    var needle = (text.value || "").toLowerCase();
    var lo = parseFloat(minDensity.value);
    var hi = parseFloat(maxDensity.value);
    var n = 0;
    rows.forEach(function (row) {
      var density = parseFloat(row.getAttribute("data-density"));
      var ok = (!needle || row.textContent.toLowerCase().indexOf(needle) >= 0) &&
               (isNaN(lo) || density >= lo / 100) && (isNaN(hi) || density <= hi / 100);
      row.style.display = ok ? "" : "none";
      if (ok) { n += 1; }
    });
    shown.textContent = n + " of " + rows.length + " latents shown";
  }

  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    if (!th.classList.contains("sortable")) { return; }
    th.addEventListener("click", function () {
      var numeric = th.classList.contains("num");
      var asc = !th.classList.contains("asc");
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
        other.classList.remove("asc", "desc");
      });
      th.classList.add(asc ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = cellValue(a, col, numeric), y = cellValue(b, col, numeric);
        if (x < y) { return asc ? -1 : 1; }
        if (x > y) { return asc ? 1 : -1; }
        return 0;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  [text, minDensity, maxDensity].forEach(function (el) { el.addEventListener("input", applyFilter); });
  applyFilter();
})();
