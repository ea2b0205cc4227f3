// The web view: a sessions table and a session page, both polling the server's JSON.
// Plain JavaScript, no library, no build step; every value from the sidecars is set as text,
// except the diagram and the steps table, which the server renders (escaped) as SVG and HTML.
(function () {
  "use strict";
  var TERMINAL = ["completed", "compensated", "failed", "cancelled"];
  var timer = null;
  var generation = 0;

  function $(id) { return document.getElementById(id); }

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (className) { node.className = className; }
    return node;
  }

  function badge(text, prefix) {
    return el("span", text, "badge " + (prefix || "s-") + String(text).replace(/ /g, "-"));
  }

  function short(iso) { return iso ? String(iso).slice(0, 23).replace("T", " ") : ""; }

  function live(ok) {
    var node = $("live");
    node.textContent = ok ? "live · " + new Date().toLocaleTimeString() : "not reachable";
    node.classList.toggle("stale", !ok);
  }

  function showErrors(errors) {
    var box = $("errors");
    box.textContent = "";
    (errors || []).forEach(function (e) { box.appendChild(el("div", e.source + ": " + e.error)); });
    box.hidden = !(errors && errors.length);
  }

  function getJSON(url) {
    return fetch(url, { cache: "no-store" }).then(function (r) {
      return r.json().then(function (body) { return { status: r.status, body: body }; });
    });
  }

  function schedule(fn, ms, mine) {
    timer = setTimeout(function () { if (mine === generation) { fn(mine); } }, ms);
  }

  // -- the sessions table ---------------------------------------------------------------------
  function query() {
    var parts = [];
    ["status", "choreography", "since"].forEach(function (name) {
      var value = $("f-" + name).value;
      if (value) { parts.push(name + "=" + encodeURIComponent(value)); }
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  function fillChoreographies(names) {
    var select = $("f-choreography");
    var known = Array.prototype.map.call(select.options, function (o) { return o.value; });
    names.forEach(function (name) {
      if (known.indexOf(name) < 0) { var o = el("option", name); o.value = name; select.appendChild(o); }
    });
  }

  function renderList(body) {
    showErrors(body.errors);
    fillChoreographies(body.choreographies || []);
    var counts = $("counts");
    counts.textContent = "";
    counts.appendChild(el("span", body.total + " sessions: "));
    Object.keys(body.counts).forEach(function (key) {
      var b = badge(body.counts[key] + " " + key);
      b.classList.add("s-" + key.replace(/ /g, "-"));
      b.setAttribute("data-count", key);
      counts.appendChild(b);
    });
    var head = $("sessions-head");
    head.textContent = "";
    ["session", "choreography"].concat(body.roles, ["agree", "updated (UTC)"]).forEach(function (h) {
      head.appendChild(el("th", h));
    });
    var rows = $("sessions-table").tBodies[0];
    rows.textContent = "";
    body.sessions.forEach(function (s) {
      var tr = el("tr");
      tr.setAttribute("data-session", s.session_id);
      var link = el("a", s.session_id);
      link.href = "#/session/" + encodeURIComponent(s.session_id);
      var first = el("td"); first.appendChild(link); tr.appendChild(first);
      tr.appendChild(el("td", s.choreography + " v" + s.version));
      body.roles.forEach(function (role) {
        var td = el("td");
        if (s.statuses[role]) { td.appendChild(badge(s.statuses[role])); } else { td.textContent = "-"; }
        td.setAttribute("data-role", role);
        tr.appendChild(td);
      });
      var agree = el("td"); agree.appendChild(badge(s.agree, "a-")); tr.appendChild(agree);
      tr.appendChild(el("td", short(s.updated_at)));
      tr.addEventListener("click", function (event) {
        if (event.target.tagName !== "A") { location.hash = "#/session/" + encodeURIComponent(s.session_id); }
      });
      rows.appendChild(tr);
    });
    $("empty").hidden = body.sessions.length > 0;
  }

  function pollList(mine) {
    getJSON("api/sessions" + query()).then(function (answer) {
      if (mine !== generation) { return; }
      renderList(answer.body);
      live(true);
      schedule(pollList, 2000, mine);
    }).catch(function () { live(false); schedule(pollList, 3000, mine); });
  }

  // -- one session ----------------------------------------------------------------------------
  function hover() {
    function mark(order, on) {
      document.querySelectorAll('[data-order="' + order + '"]').forEach(function (node) {
        node.classList.toggle("hot", on);
      });
    }
    document.querySelectorAll("#session-page [data-order]").forEach(function (node) {
      var order = node.getAttribute("data-order");
      if (order === "-1") { return; }
      node.addEventListener("mouseenter", function () { mark(order, true); });
      node.addEventListener("mouseleave", function () { mark(order, false); });
    });
  }

  function renderSession(view) {
    showErrors(view.errors);
    $("where").textContent = "session " + view.session_id;
    var title = $("s-title");
    title.textContent = view.choreography + " v" + view.version + " ";
    title.appendChild(badge(view.status));
    $("s-sub").textContent = "session " + view.session_id + " · roles agree: " + view.agree + " · " +
      view.events.length + " steps";
    var failure = $("s-failure");
    if (view.failure && view.status !== "completed") {
      var f = view.failure;
      failure.textContent = "failure: " + f.error_type + " at role " + f.role +
        (f.transaction ? " (transaction " + f.transaction + ")" : "") + ": " + f.message;
      failure.hidden = false;
    } else { failure.hidden = true; }
    var rows = $("s-roles").tBodies[0];
    rows.textContent = "";
    view.roles.forEach(function (role) {
      var record = view.records[role];
      var waiting = view.waiting[role];
      var tr = el("tr");
      tr.setAttribute("data-role", role);
      tr.appendChild(el("td", role));
      var status = el("td");
      if (record) { status.appendChild(badge(record.status)); } else { status.textContent = "not known"; }
      tr.appendChild(status);
      tr.appendChild(el("td", record ? short(record.updated_at) : ""));
      tr.appendChild(el("td", waiting ? waiting.text : "", "waiting"));
      rows.appendChild(tr);
    });
    $("diagram").innerHTML = view.svg;  // rendered and escaped by the server
    $("steps").innerHTML = view.steps_html;
    hover();
  }

  function pollSession(mine, id) {
    getJSON("api/sessions/" + encodeURIComponent(id)).then(function (answer) {
      if (mine !== generation) { return; }
      if (answer.status === 404) {
        showErrors([{ source: "web view", error: answer.body.error }].concat(answer.body.errors || []));
        schedule(function (m) { pollSession(m, id); }, 2000, mine);
        return;
      }
      renderSession(answer.body);
      live(true);
      var done = TERMINAL.indexOf(answer.body.status) >= 0;
      schedule(function (m) { pollSession(m, id); }, done ? 5000 : 1000, mine);
    }).catch(function () { live(false); schedule(function (m) { pollSession(m, id); }, 3000, mine); });
  }

  // -- routing --------------------------------------------------------------------------------
  function route() {
    generation += 1;
    clearTimeout(timer);
    var found = /^#\/session\/(.+)$/.exec(location.hash);
    $("list-page").hidden = !!found;
    $("session-page").hidden = !found;
    if (found) {
      pollSession(generation, decodeURIComponent(found[1]));
    } else {
      $("where").textContent = "sessions";
      pollList(generation);
    }
  }

  ["f-status", "f-choreography", "f-since"].forEach(function (id) {
    $(id).addEventListener("change", route);
  });
  window.addEventListener("hashchange", route);
  route();
})();
