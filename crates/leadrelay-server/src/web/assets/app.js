// leadrelay web UI: the little that needs a script. Every page works without it.
"use strict";

// A register row's JSON opens under the row, fetched as server-rendered (escaped) HTML.
function toggleJson(link) {
  const row = link.closest("tr");
  const next = row.nextElementSibling;
  if (next && next.classList.contains("detail")) {
    next.remove();
    row.classList.remove("open");
    return;
  }
  fetch(link.dataset.fragment, { credentials: "same-origin" })
    .then((response) => (response.ok ? response.text() : Promise.reject(response.status)))
    .then((html) => {
      const detail = document.createElement("tr");
      detail.className = "detail";
      const cell = document.createElement("td");
      cell.colSpan = row.children.length;
      cell.innerHTML = html; // rendered and escaped by the server
      detail.appendChild(cell);
      row.after(detail);
      row.classList.add("open");
    })
    .catch(() => { window.location = link.href; });
}

// The first page of the register takes new rows, and rows whose status changed, as they come.
function followRegister(table) {
  const body = table.tBodies[0];
  const refresh = () => {
    fetch(table.dataset.live, { credentials: "same-origin" })
      .then((response) => (response.ok && !response.redirected ? response.text() : Promise.reject(response.status)))
      .then((html) => {
        const holder = document.createElement("template");
        holder.innerHTML = html;
        const fresh = Array.from(holder.content.querySelectorAll("tr.transfer"));
        let anchor = null;
        for (const row of fresh) {
          const id = row.dataset.id;
          const current = body.querySelector(`tr.transfer[data-id="${CSS.escape(id)}"]`);
          if (current) {
            if (current.dataset.status !== row.dataset.status && !current.classList.contains("open")) {
              row.classList.add("arrived");
              current.replaceWith(row);
            }
            anchor = body.querySelector(`tr.transfer[data-id="${CSS.escape(id)}"]`);
            const detail = anchor && anchor.nextElementSibling;
            if (detail && detail.classList.contains("detail")) anchor = detail;
          } else {
            row.classList.add("arrived");
            if (anchor) anchor.after(row); else body.prepend(row);
            anchor = row;
          }
        }
        const empty = document.querySelector("p.empty");
        if (empty && body.rows.length > 0) empty.remove();
      })
      .catch(() => {})
      .finally(() => window.setTimeout(refresh, 2000));
  };
  window.setTimeout(refresh, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a.json-toggle");
    if (link && !event.ctrlKey && !event.metaKey && !event.shiftKey) {
      event.preventDefault();
      toggleJson(link);
    }
  });
  const table = document.querySelector("table[data-live]");
  if (table) followRegister(table);
  const job = document.querySelector("[data-refresh]");
  if (job) window.setTimeout(() => window.location.reload(), 1000 * Number(job.dataset.refresh));
});
