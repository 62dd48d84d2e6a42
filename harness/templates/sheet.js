"use strict";
(function () {
  // Every value shown here comes from the JSON blob and is written with textContent:
  // prompts and factor values are data, never markup.
  var data = JSON.parse(document.getElementById("sheet-data").textContent);
  var dialog = document.getElementById("detail");
  var order = Array.prototype.map.call(document.querySelectorAll("figure.item"), function (f) {
    return f.getAttribute("data-key");
  });
  var current = null;

  function $(id) { return document.getElementById(id); }

  // The top bar takes more lines in a narrow window: what sits below it follows its height.
  var bar = document.querySelector(".bar");
  // Set only when it changes: setting it restyles the whole page.
  var barHeight = null;
  function fitBar() {
    var h = Math.ceil(bar.getBoundingClientRect().height);
    if (h !== barHeight) { barHeight = h; document.documentElement.style.setProperty("--bar-h", h + "px"); }
  }
  fitBar();
  window.addEventListener("resize", fitBar);

  function text(el, value) { el.textContent = value === null || value === undefined ? "" : String(value); }

  function fillPairs(tbody, pairs) {
    tbody.replaceChildren();
    pairs.forEach(function (pair) {
      var tr = document.createElement("tr");
      var th = document.createElement("th");
      var td = document.createElement("td");
      text(th, pair[0]);
      text(td, pair[1]);
      tr.append(th, td);
      tbody.append(tr);
    });
    if (!pairs.length) {
      var empty = document.createElement("tr");
      var cell = document.createElement("td");
      text(cell, "none");
      empty.append(cell);
      tbody.append(empty);
    }
  }

  function linkTo(key) {
    var rec = data[key];
    var b = document.createElement("button");
    b.type = "button";
    b.className = "link";
    b.setAttribute("data-open", key);
    text(b, rec ? rec.title || key : key.slice(0, 12));
    b.disabled = !rec;
    return b;
  }

  function show(key) {
    var r = data[key];
    if (!r) { return; }
    current = key;
    text($("d-title"), r.title || key);
    var badges = $("d-badges");
    badges.replaceChildren();
    r.badges.forEach(function (name) {
      var s = document.createElement("span");
      s.className = "badge " + (name === "watermark" ? "wm" : "bad");
      text(s, name === "watermark" ? "WM" : name);
      badges.append(s);
    });
    var img = $("d-img");
    img.hidden = !!r.problem;
    $("d-missing").hidden = !r.problem;
    text($("d-missing"), r.problem ? "No image: " + r.problem : "");
    if (r.problem) { img.removeAttribute("src"); } else { img.src = r.image; }
    img.alt = r.title || "";
    // No link to a file that is not there.
    $("d-link").hidden = !!r.problem;
    if (r.problem) { $("d-link").removeAttribute("href"); } else { $("d-link").href = r.image; }
    var parentBox = $("d-parent");
    parentBox.hidden = !r.parent;
    if (r.parent) {
      // A parent with no readable file (a staged run whose parent was deleted): a placeholder, no request.
      var parentProblem = data[r.parent] ? data[r.parent].problem : r.parent_problem;
      $("d-parent-img").hidden = !!parentProblem;
      $("d-parent-missing").hidden = !parentProblem;
      text($("d-parent-missing"), parentProblem ? "No image: " + parentProblem : "");
      if (parentProblem) { $("d-parent-img").removeAttribute("src"); } else { $("d-parent-img").src = r.parent_image; }
      var open = $("d-parent-open");
      open.setAttribute("data-open", r.parent);
      open.disabled = !data[r.parent];
      text(open, data[r.parent] ? data[r.parent].title || r.parent : r.parent.slice(0, 12));
    } else {
      $("d-parent-img").removeAttribute("src");
    }
    text($("d-prompt"), r.prompt);
    text($("d-neg"), r.negative_prompt ? r.negative_prompt : "(none)");
    $("d-children-box").hidden = !r.children.length;
    $("d-children").replaceChildren();
    r.children.forEach(function (child) { $("d-children").appendChild(linkTo(child)); });
    fillPairs($("d-scores"), r.scores.map(function (s) { return [s[0], s[1]]; }));
    fillPairs($("d-factors"), r.factors);
    fillPairs($("d-params"), [["key", r.key]].concat(r.params));
    var i = order.indexOf(key);
    $("d-prev").disabled = i <= 0;
    $("d-next").disabled = i < 0 || i >= order.length - 1;
    if (!dialog.open) { dialog.showModal(); }
    $("d-close").focus();
  }

  function step(delta) {
    var i = order.indexOf(current) + delta;
    if (current !== null && i >= 0 && i < order.length) { show(order[i]); }
  }

  // A thumbnail opens its figure's image; other buttons and links name theirs in data-open.
  document.addEventListener("click", function (ev) {
    var thumb = ev.target.closest("button.open");
    var target = thumb ? thumb.closest("figure.item") : ev.target.closest("[data-open]");
    if (target) {
      ev.preventDefault();
      show(target.getAttribute(thumb ? "data-key" : "data-open"));
    }
  });
  $("d-close").addEventListener("click", function () { dialog.close(); });
  $("d-prev").addEventListener("click", function () { step(-1); });
  $("d-next").addEventListener("click", function () { step(1); });
  dialog.addEventListener("click", function (ev) { if (ev.target === dialog) { dialog.close(); } });
  dialog.addEventListener("close", function () { current = null; });
  dialog.addEventListener("keydown", function (ev) {
    if (ev.key === "ArrowLeft") { step(-1); ev.preventDefault(); }
    if (ev.key === "ArrowRight") { step(1); ev.preventDefault(); }
  });

  // Sortable tables: numbers by value (text spelled as a number too: 0.05 before 0.25), then text in
  // natural order; missing cells ("—") last either way.
  var NUMBER = /^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$/;
  // Natural order as harness.columns.natural_key has it, so the tables sort as the grids and plots do: runs
  // of digits compare as numbers (as decimals when written with a point: "weight 0.15" before "weight 0.4";
  // whole ones exactly, as integers: "s2" before "s10"; a version's or date's parts as integers: "v1.9"
  // before "v1.10", "2024.9.30" before "2024.10.01"), numbers before other text, other text case-folded
  // (upper- then lower-cased, as Python's casefold: "ß" reads "ss"); texts that read alike by the raw text.
  // "After a letter" is Python's [^\W\d_]: letters and the other numerals (², Ⅻ), not decimal digits.
  // Built from text: a browser without lookbehind (Safari before 16.4) would refuse the whole script over a
  // literal; it sorts decimals after a letter as decimals too, and everything else as here.
  var RUNS;
  try {
    RUNS = new RegExp("((?<![\\p{L}\\p{Nl}\\p{No}.])[0-9]+\\.[0-9]+(?![0-9]|\\.[0-9])|[0-9]+)|([^0-9]+)", "gu");
  } catch (e) {
    RUNS = /([0-9]+\.[0-9]+(?![0-9]|\.[0-9])|[0-9]+)|([^0-9]+)/g;
  }
  function runs(t) {
    return Array.from(t.matchAll(RUNS), function (m) {
      if (m[1] === undefined) { return { text: m[2].toUpperCase().toLowerCase() }; }
      return { num: m[1].indexOf(".") < 0 ? BigInt(m[1]) : Number(m[1]) };
    });
  }
  function naturalCompare(a, b) {
    var x = runs(a), y = runs(b);
    for (var i = 0; i < x.length && i < y.length; i++) {
      var p = x[i], q = y[i], pn = "num" in p, qn = "num" in q;
      if (pn !== qn) { return pn ? -1 : 1; }
      var u = pn ? p.num : p.text, v = pn ? q.num : q.text;
      if (u < v) { return -1; }
      if (u > v) { return 1; }
    }
    return (x.length - y.length) || (a < b ? -1 : a > b ? 1 : 0);
  }
  function sortBy(th) {
    var table = th.closest("table");
    var column = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.map.call(body.rows, function (row) {
      var c = row.cells[column];
      var t = c ? c.textContent.trim() : "";
      var v = numeric ? (c && c.getAttribute("data-sort")) || "" : (NUMBER.test(t) ? t : "");
      var missing = numeric ? v === "" : t === "" || t === "—";
      // the empty level reads "(empty)" and sorts as the empty text it is, first, as the grids order it
      return { row: row, text: t === "(empty)" ? "" : t, num: v === "" ? NaN : Number(v), missing: missing };
    });
    rows.sort(function (x, y) {
      if (x.missing || y.missing) { return x.missing - y.missing; }
      if (!isNaN(x.num) && !isNaN(y.num)) { return ((x.num - y.num) || naturalCompare(x.text, y.text)) * dir; }
      return ((isNaN(x.num) - isNaN(y.num)) || naturalCompare(x.text, y.text)) * dir;
    });
    // One fragment, row by row: spread as arguments, 100,000 rows would overflow the call stack.
    var sorted = document.createDocumentFragment();
    rows.forEach(function (r) { sorted.appendChild(r.row); });
    body.appendChild(sorted);
  }
  document.querySelectorAll("table.sortable thead th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });

  var size = $("size");
  if (size) {
    size.addEventListener("input", function () {
      document.body.style.setProperty("--thumb", size.value + "px");
    });
  }
})();
