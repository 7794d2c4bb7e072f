/* cai report: filter, page and open records. All model text goes into the page through textContent. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("cai-data").textContent);
  var PAGE = 50;             // records per page
  var MAX_CELLS = 4000000;   // word pairs compared at most per diff; a larger middle is shown replaced whole
  var recs = DATA.records, names = DATA.principles;
  var view = recs, page = 0;
  var sel = document.getElementById("f-principle"), vio = document.getElementById("f-violated");
  var q = document.getElementById("f-search"), list = document.getElementById("rec-list");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // Words with their trailing whitespace, so that joining the pieces gives back each text exactly.
  function tokens(s) { return s ? s.match(/\s+|\S+\s*/g) || [] : []; }

  // Word diff of two texts: [[op, text], ...], op "equal" | "delete" | "insert" (as cai.explore.word_diff).
  // Common prefix and suffix are skipped, the middle is a longest common subsequence over words.
  function wordDiff(a, b) {
    var A = tokens(a), B = tokens(b), out = [];
    function push(op, t) {
      if (!t) return;
      var last = out[out.length - 1];
      if (last && last[0] === op) last[1] += t; else out.push([op, t]);
    }
    var s = 0;
    while (s < A.length && s < B.length && A[s] === B[s]) s++;
    var ea = A.length, eb = B.length;
    while (ea > s && eb > s && A[ea - 1] === B[eb - 1]) { ea--; eb--; }
    push("equal", A.slice(0, s).join(""));
    var n = ea - s, m = eb - s;
    if (n * m > MAX_CELLS) {
      push("delete", A.slice(s, ea).join(""));
      push("insert", B.slice(s, eb).join(""));
    } else if (n > 0 || m > 0) {
      var w = m + 1, L = new Uint32Array((n + 1) * w), i, j;
      for (i = n - 1; i >= 0; i--) {
        for (j = m - 1; j >= 0; j--) {
          L[i * w + j] = A[s + i] === B[s + j] ? L[(i + 1) * w + j + 1] + 1
            : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
        }
      }
      var del = "", ins = "";
      i = 0; j = 0;
      while (i < n || j < m) {
        if (i < n && j < m && A[s + i] === B[s + j]) {
          push("delete", del); push("insert", ins); del = ""; ins = "";
          push("equal", A[s + i]); i++; j++;
        } else if (j >= m || (i < n && L[(i + 1) * w + j] >= L[i * w + j + 1])) {
          del += A[s + i]; i++;
        } else {
          ins += B[s + j]; j++;
        }
      }
      push("delete", del); push("insert", ins);
    }
    push("equal", A.slice(ea).join(""));
    return out;
  }

  // The text of record r: prompt, draft, critiques and revisions, lower-cased once, when first searched.
  function haystack(r) {
    if (r._h === undefined) {
      var parts = [r.id, r.p, r.d || "", r.e || ""];
      r.c.forEach(function (c) { parts.push(names[c[1]], c[4] || "", c[5] || ""); });
      r._h = parts.join("\n").toLowerCase();
    }
    return r._h;
  }

  function matches(r, pi, violated, needle) {
    if (pi >= 0 || violated) {
      var hit = r.c.some(function (c) { return (pi < 0 || c[1] === pi) && (!violated || c[2] === 1); });
      if (!hit) return false;
    }
    return !needle || haystack(r).indexOf(needle) >= 0;
  }

  function apply() {
    var pi = sel.value === "" ? -1 : Number(sel.value), needle = q.value.trim().toLowerCase();
    view = pi < 0 && !vio.checked && !needle ? recs
      : recs.filter(function (r) { return matches(r, pi, vio.checked, needle); });
    page = 0;
    render();
  }

  function render() {
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    list.replaceChildren();
    view.slice(page * PAGE, page * PAGE + PAGE).forEach(function (r) { list.appendChild(row(r)); });
    document.getElementById("f-count").textContent = view.length + " of " + recs.length + " records";
    document.getElementById("p-info").textContent = "page " + (page + 1) + " of " + pages;
    document.getElementById("p-prev").disabled = page === 0;
    document.getElementById("p-next").disabled = page >= pages - 1;
  }

  function verdictClass(c) { return c[2] === 1 ? "v" : c[2] === 0 ? "ok" : "unparsed"; }

  function row(r) {
    var li = el("li"), head = el("button", "rec-head");
    head.type = "button";
    li.dataset.id = r.id;
    head.appendChild(el("span", "rec-id", r.id));
    if (r.s !== "done") head.appendChild(el("span", "badge" + (r.s === "failed" ? " failed" : ""), r.s));
    r.c.forEach(function (c) {
      var b = el("span", "badge " + verdictClass(c), names[c[1]]);
      b.title = "round " + c[0] + ": " + (c[2] === 1 ? "violates, severity " + c[3] : c[2] === 0 ? "no violation" : "unparsed");
      head.appendChild(b);
    });
    head.appendChild(el("span", "excerpt", r.p.slice(0, 300)));
    head.setAttribute("aria-expanded", "false");
    head.addEventListener("click", function () {
      var open = li.querySelector(".detail");
      if (open) { open.remove(); head.setAttribute("aria-expanded", "false"); return; }
      li.appendChild(detail(r));
      head.setAttribute("aria-expanded", "true");
    });
    li.appendChild(head);
    return li;
  }

  function block(parent, label, text) {
    parent.appendChild(el("div", "label", label));
    parent.appendChild(el("div", "text", text));
  }

  function reward(r, round) {
    return r.g && r.g[round] !== undefined ? " · reward " + Number(r.g[round]).toFixed(3) : "";
  }

  function diffColumn(ops, keep, mark) {
    var div = el("div", "text");
    ops.forEach(function (o) {
      if (o[0] === "equal") div.appendChild(document.createTextNode(o[1]));
      else if (o[0] === keep) div.appendChild(el(mark, null, o[1]));
    });
    return div;
  }

  function detail(r) {
    var d = el("div", "detail");
    (r.ctx || []).forEach(function (m) { block(d, m[0] + " turn", m[1]); });
    block(d, "prompt", r.p);
    var meta = [];
    if (r.x) meta.push("expected: " + r.x);
    if (r.t) meta.push("response type: " + r.t);
    if (r.s !== "done") meta.push("status: " + r.s);
    if (meta.length) d.appendChild(el("p", null, meta.join(" · ")));
    if (r.e) d.appendChild(el("p", "error", r.e));
    if (r.d === null || r.d === undefined) { d.appendChild(el("p", null, "No draft yet.")); return d; }
    block(d, "draft" + reward(r, 0), r.d);
    var current = r.d;
    r.c.forEach(function (c) {
      var before = c.length > 6 ? c[6] : current, sec = el("div", "round " + verdictClass(c));
      sec.dataset.round = c[0];
      sec.appendChild(el("div", "label", "round " + c[0] + " · " + names[c[1]]));
      sec.appendChild(el("div", "verdict", c[2] === 1 ? "violates · severity " + c[3]
        : c[2] === 0 ? "no violation (severity " + c[3] + ")" : "unparsed verdict (the raw critique was used)"));
      if (c[2] === 1 || c[2] === 0) {
        block(sec, "critique", c[4]);
      } else {  // no verdict could be read from the critic's reply: say so, and keep the reply one click away
        block(sec, "critique", "unparsed");
        var raw = el("details", "raw");
        raw.appendChild(el("summary", null, "the critic's reply as it came"));
        raw.appendChild(el("div", "text", c[4]));
        sec.appendChild(raw);
      }
      if (c[5] === null || c[5] === undefined) {
        sec.appendChild(el("p", null, "Not revised in this round."));
      } else {
        var ops = wordDiff(before, c[5]), grid = el("div", "sbs diff"), left = el("div"), right = el("div");
        left.appendChild(el("div", "label", "before" + reward(r, c[0] - 1)));
        left.appendChild(diffColumn(ops, "delete", "del"));
        right.appendChild(el("div", "label", (c[5] === before ? "revision (unchanged)" : "revision") + reward(r, c[0])));
        right.appendChild(diffColumn(ops, "insert", "ins"));
        grid.appendChild(left); grid.appendChild(right);
        sec.appendChild(grid);
        current = c[5];
      }
      d.appendChild(sec);
    });
    return d;
  }

  var sampled = names.map(function () { return 0; });
  recs.forEach(function (r) {
    r.c.map(function (c) { return c[1]; }).filter(function (p, k, all) { return all.indexOf(p) === k; })
      .forEach(function (p) { sampled[p]++; });
  });
  names.forEach(function (name, i) {
    var o = el("option", null, name + " (" + sampled[i] + " records)");
    o.value = String(i);
    sel.appendChild(o);
  });
  sel.addEventListener("change", apply);
  vio.addEventListener("change", apply);
  q.addEventListener("input", apply);
  document.getElementById("p-prev").addEventListener("click", function () { page--; render(); });
  document.getElementById("p-next").addEventListener("click", function () { page++; render(); });
  window.caiReport = { wordDiff: wordDiff, records: recs };
  apply();
  document.body.dataset.ready = "1";
})();
