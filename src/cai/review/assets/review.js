/* cai review page: one record at a time, keyboard first. Model and prompt text goes in through textContent only. */
(function () {
  "use strict";
  var TOKEN = new URLSearchParams(location.search).get("token") || "";
  var CRITIQUE_KEYS = { a: "agree", d: "disagree" };
  var PAIR_KEYS = { c: "chosen", r: "rejected", t: "tie", b: "both_bad" };
  var state = { total: 0, n: 0, rec: null, cur: 0, editing: null, busy: false };
  var main = document.getElementById("record"), statusEl = document.getElementById("status");
  var editor = document.getElementById("editor"), editorText = document.getElementById("editor-text");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function say(text, error) {
    statusEl.textContent = text;
    statusEl.className = error ? "error" : "";
  }

  function api(path, body) {
    var opts = { headers: { "X-CAI-Token": TOKEN }, cache: "no-store" };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
        return data;
      });
    });
  }

  function text(label, value) {
    var box = el("div");
    box.appendChild(el("div", "label", label));
    box.appendChild(el("div", "text", value === null || value === undefined ? "—" : value));
    return box;
  }

  // A word diff ([[op, text], ...], from cai.read.explore.word_diff) as the text before and the text after.
  function diffView(ops, beforeLabel, afterLabel) {
    var grid = el("div", "sbs diff"), left = el("div"), right = el("div");
    var a = el("div", "text"), b = el("div", "text");
    ops.forEach(function (op) {
      if (op[0] === "equal") { a.appendChild(document.createTextNode(op[1])); b.appendChild(document.createTextNode(op[1])); }
      else if (op[0] === "delete") a.appendChild(el("del", null, op[1]));
      else b.appendChild(el("ins", null, op[1]));
    });
    left.appendChild(el("div", "label", beforeLabel)); left.appendChild(a);
    right.appendChild(el("div", "label", afterLabel)); right.appendChild(b);
    grid.appendChild(left); grid.appendChild(right);
    return grid;
  }

  function fmt(x, digits) { return x === null || x === undefined ? "—" : Number(x).toFixed(digits); }

  function mineLine(t) {
    var line = el("div", "mine" + (t.mine ? "" : " none"));
    if (!t.mine) { line.textContent = "not decided yet"; return line; }
    line.appendChild(document.createTextNode("your decision: " + t.mine.decision.replace("_", " ")));
    if (t.mine.stale) line.appendChild(el("span", "badge stale", "stale: the text changed since"));
    if (t.mine.edit !== null) line.appendChild(el("span", "badge", "edited"));
    if (t.mine.note !== null) line.appendChild(el("div", "sub", "note: " + t.mine.note));
    return line;
  }

  function critiqueBox(c) {
    var box = el("section", "target " + (c.violates ? "v" : c.violates === false ? "ok" : ""));
    var head = el("div");
    head.appendChild(el("b", null, "Critique, round " + c.round + " "));
    head.appendChild(el("span", "badge" + (c.violates ? " v" : c.violates === false ? " ok" : ""),
      c.violates === null || c.violates === undefined ? "unparsed" :
        (c.violates ? "violates · severity " + c.severity : "no violation")));
    head.appendChild(el("span", "badge principle", c.principle));
    head.appendChild(el("span", "badge", "layer " + (c.layer === null ? "—" : c.layer)));
    head.appendChild(el("span", "badge", "kind " + (c.kind === null ? "—" : c.kind)));
    box.appendChild(head);
    box.appendChild(text("critique", c.critique));
    if (c.diff) box.appendChild(diffView(c.diff, "before (judged)", "revision " + c.round));
    else box.appendChild(text("the response judged (not revised)", c.before));
    return box;
  }

  // A pair: its texts side by side, or (the revision pair) the draft against the final revision as a word diff.
  function pairBox(title, p, facts) {
    var box = el("section", "target pair");
    var head = el("div");
    head.appendChild(el("b", null, title + " "));
    facts.forEach(function (f) { if (f) head.appendChild(el("span", "badge", f)); });
    box.appendChild(head);
    if (p.diff) {
      box.appendChild(diffView(p.diff, "rejected: the draft", "chosen: the final revision"));
      return box;
    }
    var grid = el("div", "sbs");
    grid.appendChild(text("chosen", p.chosen));
    grid.appendChild(text("rejected", p.rejected));
    box.appendChild(grid);
    return box;
  }

  function render(rec) {
    main.textContent = "";
    var nav = el("h2", null, "Record " + (rec.index + 1) + " of " + rec.total + " · " + rec.id);
    main.appendChild(nav);
    var prompt = el("div");
    prompt.id = "prompt";
    rec.prompt.forEach(function (m) { var t = text(m.role, m.content); t.className = "turn"; prompt.appendChild(t); });
    main.appendChild(prompt);
    var draft = text("draft", rec.draft);
    draft.id = "draft";
    main.appendChild(draft);
    var boxes = [];
    rec.critiques.forEach(function (c) { boxes.push(critiqueBox(c)); });
    if (rec.revision_pair) {
      var rp = rec.revision_pair, q = rp.quality || { flags: [], kept: true, out: [] };
      boxes.push(pairBox("Revision pair: the final revision (chosen) over the draft (rejected)", rp,
        [q.kept ? "exported" : "not exported: " + q.out.join(", ")].concat(q.flags.map(function (f) { return "flag " + f; }))));
    }
    rec.ai_pairs.forEach(function (p) {
      boxes.push(pairBox("AI-labeled pair " + p.pair, p,
        ["judge " + (p.judge || "—"), "P(chosen wins) " + fmt(p.p, 2), "margin " + fmt(p.margin, 2),
         p.principle ? "principle " + p.principle : null].concat(p.quality.map(function (f) { return "flag " + f; }))));
    });
    if (boxes.length !== rec.targets.length) throw new Error("targets and boxes differ");
    boxes.forEach(function (b, i) {
      var t = rec.targets[i];
      b.dataset.target = String(i);
      b.dataset.item = t.item;
      b.dataset.decision = t.mine ? t.mine.decision : "";
      b.appendChild(mineLine(t));
      main.appendChild(b);
    });
    mark();
  }

  function targetEls() { return main.querySelectorAll(".target"); }

  function mark() {
    targetEls().forEach(function (b, i) { b.classList.toggle("current", i === state.cur); });
    var cur = targetEls()[state.cur];
    if (cur) cur.scrollIntoView({ block: "nearest" });
  }

  function refresh(i) {
    var t = state.rec.targets[i], box = targetEls()[i];
    box.dataset.decision = t.mine ? t.mine.decision : "";
    box.replaceChild(mineLine(t), box.querySelector(".mine"));
  }

  function showProgress(p) {
    document.getElementById("progress").textContent = p.done + " of " + p.total + " records reviewed";
    var body = document.querySelector("#by-principle tbody");
    body.textContent = "";
    p.by_principle.forEach(function (row) {
      var tr = el("tr");
      tr.appendChild(el("td", null, row.principle));
      tr.appendChild(el("td", null, row.done));
      tr.appendChild(el("td", null, row.total));
      body.appendChild(tr);
    });
  }

  function load(n) {
    if (n < 0 || n >= state.total) { say(n < 0 ? "this is the first record" : "this is the last record"); return; }
    api("/api/record/" + n).then(function (rec) {
      state.n = n; state.rec = rec; state.cur = 0;
      history.replaceState(null, "", "#" + (n + 1));
      document.getElementById("pos").textContent = "record " + (n + 1) + " of " + rec.total;
      render(rec);
      showProgress(rec.progress);
      document.body.dataset.record = rec.id;
      document.body.dataset.ready = "1";
    }).catch(function (e) { say(e.message, true); });
  }

  function save(i, fields) {
    var t = state.rec.targets[i];
    var body = { id: state.rec.id, item: t.item, decision: fields.decision };
    if (t.item === "critique") body.round = t.round;
    if (t.pair) body.pair = t.pair;
    if (fields.edit !== null && fields.edit !== undefined) body.edit = fields.edit;
    if (fields.note !== null && fields.note !== undefined) body.note = fields.note;
    state.busy = true;
    document.body.dataset.saving = "1";
    return api("/api/decision", body).then(function (res) {
      t.mine = res.mine;
      refresh(i);
      showProgress(res.progress);
      say("saved: " + res.mine.decision.replace("_", " "));
    }).catch(function (e) { say(e.message, true); throw e; }).finally(function () {
      state.busy = false;
      delete document.body.dataset.saving;
    });
  }

  function decide(decision) {
    var i = state.cur, t = state.rec.targets[i], m = t.mine;
    var keep = m && m.decision === decision && !m.stale ? m.edit : null;  // an edit belongs to its decision
    save(i, { decision: decision, edit: keep, note: m ? m.note : null }).then(function () {
      if (state.cur === i && i + 1 < state.rec.targets.length) { state.cur = i + 1; mark(); }
    }, function () {});
  }

  function openEditor(kind) {
    var t = state.rec.targets[state.cur];
    if (!t) return;
    if (kind === "note" && !t.mine) { say("decide first, then add a note", true); return; }
    if (kind === "edit") {
      if (t.item !== "pair") { say("e edits the better side of a pair", true); return; }
      var p = t.pair ? state.rec.ai_pairs.filter(function (x) { return x.pair === t.pair; })[0] : state.rec.revision_pair;
      var flip = t.mine && t.mine.decision === "rejected";
      editorText.value = t.mine && t.mine.edit !== null && !t.mine.stale ? t.mine.edit : (flip ? p.rejected : p.chosen);
      document.getElementById("editor-title").textContent = "edit the better side (" + (flip ? "rejected" : "chosen") + ")";
    } else {
      editorText.value = t.mine.note || "";
      document.getElementById("editor-title").textContent = "note on your decision";
    }
    state.editing = kind;
    editor.hidden = false;
    editorText.focus();
  }

  function closeEditor() {
    state.editing = null;
    editor.hidden = true;
    main.focus();
  }

  function saveEditor() {
    var i = state.cur, t = state.rec.targets[i], m = t.mine, value = editorText.value;
    var fields;
    if (state.editing === "edit") {
      var decision = m && (m.decision === "chosen" || m.decision === "rejected") ? m.decision : "chosen";
      fields = { decision: decision, edit: value, note: m ? m.note : null };
    } else {
      fields = { decision: m.decision, edit: m.stale ? null : m.edit, note: value };
    }
    save(i, fields).then(closeEditor, function () {});
  }

  document.addEventListener("keydown", function (ev) {
    if (state.editing) {
      if (ev.key === "Escape") { ev.preventDefault(); closeEditor(); }
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); saveEditor(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !state.rec || state.busy) return;
    var k = ev.key, t = state.rec.targets[state.cur];
    if (k === "j" || k === "ArrowDown") { state.cur = Math.min(state.cur + 1, state.rec.targets.length - 1); mark(); }
    else if (k === "k" || k === "ArrowUp") { state.cur = Math.max(state.cur - 1, 0); mark(); }
    else if (k === "n" || k === "ArrowRight") load(state.n + 1);
    else if (k === "p" || k === "ArrowLeft") load(state.n - 1);
    else if (k === "e") openEditor("edit");
    else if (k === "m") openEditor("note");
    else if (CRITIQUE_KEYS[k] || PAIR_KEYS[k]) {
      if (!t) return;
      var table = t.item === "critique" ? CRITIQUE_KEYS : PAIR_KEYS;
      if (!table[k]) { say(t.item === "critique" ? "a critique takes a or d" : "a pair takes c, r, t or b", true); }
      else decide(table[k]);
    } else return;
    ev.preventDefault();
  });

  api("/api/queue").then(function (q) {
    state.total = q.total;
    document.getElementById("who").textContent = "· " + q.reviewer;
    showProgress(q.progress);
    if (!q.total) {
      main.appendChild(el("p", null, "Nothing to review: no record matches, or others have reviewed them all."));
      document.body.dataset.ready = "1";
      return;
    }
    var fromHash = parseInt(location.hash.slice(1), 10);
    load(fromHash >= 1 && fromHash <= q.total ? fromHash - 1 : q.start);
  }).catch(function (e) { say(e.message, true); });
}());
