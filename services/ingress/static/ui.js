// The web UI's only script (no framework, nothing fetched from elsewhere). It keeps the
// live parts of a page current by polling fragments the server renders (and escapes):
//   data-refresh="URL"             the element's content is replaced by URL's fragment;
//   data-append="URL" data-skip=N  the rows of URL?skip=N are appended, N moves on (X-AK-Skip).
// Either stops once an answer carries "X-AK-Final: 1" (the session ended, all is shown).
// It also shows <time> elements in the viewer's time zone (UTC stays in the title), copies
// webhook URLs (data-copy), and filters the journal to prints.
"use strict";

const EVERY_MS = 1000;

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]:not([data-local])")) {
    const d = new Date(el.getAttribute("datetime"));
    if (isNaN(d)) continue;
    el.dataset.local = "1";
    el.title = el.getAttribute("datetime") + " (UTC)";
    el.textContent = d.toLocaleString(undefined, {
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3,
    });
  }
}

async function fetchFragment(url) {
  const resp = await fetch(url, {
    headers: {"X-AK-Fragment": "1"}, credentials: "same-origin", cache: "no-store",
  });
  if (!resp.ok) {
    const err = new Error(`${resp.status} ${resp.statusText}`);
    err.final = resp.status === 401 || resp.status === 403;  // retrying will not help
    throw err;
  }
  return {resp, html: await resp.text()};
}

function fragmentNodes(html, parent) {
  // Parsed in the context of the element it goes into (table rows need a table body).
  const tpl = document.createElement("template");
  tpl.innerHTML = parent.tagName === "TBODY" ? `<table><tbody>${html}</tbody></table>` : html;
  const inner = parent.tagName === "TBODY" ? tpl.content.querySelector("tbody") : tpl.content;
  return Array.from(inner.childNodes);
}

function showTrouble(err, final = false) {
  let note = document.getElementById("live-trouble");
  if (!note && !err) return;
  if (!note) {
    note = document.createElement("p");
    note.id = "live-trouble";
    note.className = "error";
    note.setAttribute("role", "status");
    document.querySelector("main").prepend(note);
  }
  const then = final ? "reload the page (or log in again)" : "retrying";
  note.textContent = err ? `Live updates paused (${err.message}); ${then}.` : "";
  note.hidden = !err;
}

function poll(step) {
  const tick = async () => {
    if (!document.hidden) {
      try {
        const done = await step();
        showTrouble(null);
        if (done) return;
      } catch (err) {
        showTrouble(err, err.final);
        if (err.final) return;
      }
    }
    setTimeout(tick, EVERY_MS);
  };
  setTimeout(tick, EVERY_MS);
}

function refresh(el) {
  poll(async () => {
    const {resp, html} = await fetchFragment(el.dataset.refresh);
    el.replaceChildren(...fragmentNodes(html, el));
    localTimes(el);
    return resp.headers.get("X-AK-Final") === "1";
  });
}

function append(el) {
  poll(async () => {
    const url = new URL(el.dataset.append, location.href);
    url.searchParams.set("skip", el.dataset.skip);
    const {resp, html} = await fetchFragment(url);
    el.append(...fragmentNodes(html, el));
    el.dataset.skip = resp.headers.get("X-AK-Skip") || el.dataset.skip;
    localTimes(el);
    return resp.headers.get("X-AK-Final") === "1";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  document.querySelectorAll("[data-append]").forEach(append);
  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-copy]");
    if (!btn) return;
    navigator.clipboard.writeText(btn.dataset.copy).then(
      () => { btn.textContent = "Copied"; },
      () => { btn.textContent = "Copy failed"; },
    );
  });
  const only = document.getElementById("prints-only");
  if (only) {
    only.addEventListener("change", () => {
      document.getElementById("journal").classList.toggle("prints-only", only.checked);
    });
  }
});
