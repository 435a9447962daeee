// The LiveMigration dashboard: plain JavaScript, no build step. It reads the Coordinator's HTTP API and
// follows /api/migrations/events (server-sent events read through fetch(), so the Authorization header can
// carry the API token). It works with GET /api/inventory alone and uses /api/hosts, /api/domains, /api/vms
// and /api/migrations whenever the Coordinator answers them.
(() => {
  "use strict";

  const TOKEN_KEY = "lsm-token";
  const KNOWN_KEY = "lsm-known-migrations";
  const PRE_COPY = ["CloneImageStructure", "StartReplication", "SyncInternalVolumes", "WaitMirrorReady", "Pivot", "MarkDestinationLeafLegal", "DeleteSourceImage"];
  const POST_COPY = ["CreateVolumeCrossDomain", "LiveSnapshotToDestination", "CloneInternalVolumes", "SwitchBackingChain", "DeleteSourceImage"];

  const state = {
    hosts: [],
    domains: [],
    vms: [],
    // the page of VMs shown: a pool of thousands is listed a page at a time, filtered by the search box
    vmPage: { offset: 0, total: null, filter: "" },
    migrations: new Map(), // id -> MigrationResponse
    streamEvents: new Map(), // id -> how many events of the live stream updated it (shown as data-events)
    actionErrors: new Map(), // id -> why the last action asked of it was refused (shown until the next one)
    richMigrations: false,
    migrationTotal: null, // how many the API has: more than shown says so under the list
    // migration/disk/step -> the widest bar shown: a mirror's total grows while the guest writes, the bar never shrinks
    shownProgress: new Map(),
    // migration/disk -> the copy rate over time, from the live stream: [{ t (ms), rate (bytes/s) }], the last RATE_POINTS
    rates: new Map(),
    // migration/disk -> the last sample the rate was taken from: { t, done, step }
    lastSample: new Map(),
  };
  const RATE_POINTS = 60;
  const VM_PAGE = 50;
  // the newest migrations the page asks for and shows; the rest are a command away
  const MIGRATIONS_SHOWN = 100;

  // ---------- the API, with the token ----------

  let tokenWaiters = null;

  // lsm local up prints the dashboard's link with the token in its fragment (#token=...), which no request carries:
  // it goes into this tab's session and out of the address bar (and the history).
  (() => {
    const match = /^#token=([^&]+)/.exec(location.hash);
    if (!match) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  })();

  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  }

  /** Resolves when the operator has entered a token (every 401 waits for the same dialog). */
  function askForToken() {
    if (!tokenWaiters) {
      tokenWaiters = [];
      const dialog = document.getElementById("token-dialog");
      document.getElementById("token-input").value = "";
      if (!dialog.open) dialog.showModal();
    }
    return new Promise((resolve) => tokenWaiters.push(resolve));
  }

  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = document.getElementById("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById("token-dialog").close();
    const waiters = tokenWaiters || [];
    tokenWaiters = null;
    waiters.forEach((resolve) => resolve());
  });

  document.getElementById("token-button").addEventListener("click", () => {
    askForToken().then(() => { refreshAll(); restartStream(); });
  });

  /** fetch() with the token; a 401 asks for a token and tries again with it. */
  async function api(path, options = {}) {
    for (;;) {
      const used = sessionStorage.getItem(TOKEN_KEY);
      const headers = Object.assign({ Accept: "application/json" }, options.headers || {}, authHeaders());
      const response = await fetch(path, Object.assign({}, options, { headers }));
      if (response.status !== 401) return response;
      const now = sessionStorage.getItem(TOKEN_KEY);
      // A token entered while this request was on its way: try again with it rather than asking again.
      if (now && now !== used) continue;
      if (now) sessionStorage.removeItem(TOKEN_KEY);
      await askForToken();
    }
  }

  async function getJson(path) {
    const response = await api(path);
    if (!response.ok) return null;
    return response.json();
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.message) return (body.code ? body.code + ": " : "") + body.message;
    } catch (_) { /* not JSON */ }
    return response.status + " " + response.statusText;
  }

  // ---------- loading: the richer endpoints, else the inventory ----------

  async function loadInventory() {
    const page = state.vmPage;
    const vmsPath = "/api/vms?limit=" + VM_PAGE + "&offset=" + page.offset + (page.filter ? "&q=" + encodeURIComponent(page.filter) : "");
    const [hosts, domains, vms] = await Promise.all([getJson("/api/hosts"), getJson("/api/domains"), getJson(vmsPath)]);
    let inventory = null;
    if (!hosts || !domains || !vms) inventory = await getJson("/api/inventory");
    if (!inventory && (!hosts || !domains || !vms)) throw new Error("the Coordinator did not answer /api/inventory");

    state.hosts = hosts ? hosts.hosts : inventory.hosts.map((h) => ({
      id: h.hostId, address: h.address, spmCapable: h.spmCapable, spm: null, lastReport: h.lastReport,
      vms: inventory.vms.filter((v) => v.hostId === h.hostId).length,
    }));
    state.domains = domains ? domains.domains : inventory.domains;
    if (vms) {
      state.vms = vms.vms;
      // a Coordinator that does not page answers every VM: the page is all of them
      page.total = typeof vms.total === "number" ? vms.total : vms.vms.length;
      if (typeof vms.total !== "number") page.offset = 0;
    } else {
      page.total = null;
      const reservedBy = new Map((inventory.reservations || []).map((r) => [r.image, r.migration]));
      state.vms = inventory.vms.map((entry) => ({
        id: entry.vm.id, name: entry.vm.name, host: entry.hostId, running: entry.vm.running,
        disks: entry.vm.drives.map((d) => ({
          image: d.image, capacityBytes: d.capacityBytes, allocatedBytes: d.allocatedBytes,
          domain: d.chain.length ? d.chain[d.chain.length - 1].domain : null,
          chain: d.chain.map((layer) => ({ domain: layer.domain, image: d.image, volume: layer.volume })),
          migration: reservedBy.get(d.image) || null,
        })),
      }));
    }
  }

  async function loadMigrations() {
    // The newest page only: with thousands of migrations the API's default page (500, every disk and step) took the
    // refresh past 200 ms (bench control-plane, 10,000 in flight), and a page of hundreds is more than anyone reads.
    const response = await api("/api/migrations?limit=" + MIGRATIONS_SHOWN);
    state.migrationTotal = null; // until this answer says
    if (response.ok) {
      state.richMigrations = true;
      const body = await response.json();
      state.migrationTotal = typeof body.total === "number" ? body.total : null;
      body.migrations.forEach((m) => state.migrations.set(m.id, m));
      return;
    }
    // Without the list: the migrations this tab started or saw, and the ones holding disks now.
    const ids = new Set(knownIds());
    state.vms.forEach((vm) => vm.disks.forEach((d) => { if (d.migration) ids.add(d.migration); }));
    const loaded = await Promise.all([...ids].map((id) => getJson("/api/migrations/" + encodeURIComponent(id))));
    loaded.filter(Boolean).forEach((m) => state.migrations.set(m.id, m));
  }

  function knownIds() {
    try { return JSON.parse(sessionStorage.getItem(KNOWN_KEY) || "[]"); } catch (_) { return []; }
  }

  function remember(id) {
    const ids = knownIds().filter((known) => known !== id);
    ids.unshift(id);
    sessionStorage.setItem(KNOWN_KEY, JSON.stringify(ids.slice(0, 50)));
  }

  let refreshing = null;
  function refreshAll() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        await loadInventory();
        await loadMigrations();
        showBanner(null);
      } catch (error) {
        showBanner("Cannot load the cluster state: " + error.message);
      } finally {
        refreshing = null;
        render();
      }
    })();
    return refreshing;
  }

  let refreshTimer = null;
  /** A finished migration changes chains and free space: reload the inventory soon, once per burst. */
  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refreshAll, 400);
  }

  // ---------- the live event stream ----------

  let streamAbort = null;

  function setStreamState(text, kind) {
    const pill = document.getElementById("stream-state");
    pill.textContent = text;
    pill.className = "pill pill-" + kind;
  }

  function restartStream() {
    if (streamAbort) streamAbort.abort();
    followEvents();
  }

  async function followEvents() {
    const controller = new AbortController();
    streamAbort = controller;
    for (let delay = 1000; !controller.signal.aborted; delay = Math.min(delay * 2, 15000)) {
      try {
        const response = await api("/api/migrations/events", { headers: { Accept: "text/event-stream" }, signal: controller.signal });
        if (!response.ok || !response.body) throw new Error(await errorText(response));
        setStreamState("live", "ok");
        delay = 1000;
        await readEvents(response.body, (name, data) => {
          if (name === "migration") onMigration(JSON.parse(data));
        });
      } catch (error) {
        if (controller.signal.aborted) return;
      }
      setStreamState("reconnecting…", "warn");
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  /** Reads text/event-stream: events are separated by a blank line; lines starting with ':' are comments. */
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        block.split("\n").forEach((line) => {
          if (!line || line.startsWith(":")) return;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
        });
        if (data.length) onEvent(name, data.join("\n"));
      }
    }
  }

  function onMigration(migration) {
    const before = state.migrations.get(migration.id);
    sampleRates(migration, Date.now());
    state.migrations.set(migration.id, migration);
    state.streamEvents.set(migration.id, (state.streamEvents.get(migration.id) || 0) + 1);
    remember(migration.id);
    renderMigrations();
    if (!before || before.finished !== migration.finished || before.status !== migration.status) refreshSoon();
  }

  /**
   * Each running disk's copy rate between two updates of the live stream, within one step, timed by the Coordinator's
   * own clock (updatedAt; the step's startedAt is where a step's count begins), so the rate is the copy's and not the
   * page's reception. Kept in memory only, for the chart beside the bar, while the migration runs.
   */
  function sampleRates(migration, received) {
    const at = Date.parse(migration.updatedAt);
    const now = isNaN(at) ? received : at;
    (migration.disks || []).forEach((disk) => {
      const key = migration.id + "/" + disk.image;
      // only running disks draw a rate: a finished migration lets go of its samples, so a page left open stays small
      if (migration.finished) {
        state.rates.delete(key);
        state.lastSample.delete(key);
        return;
      }
      const done = Number(disk.done) || 0;
      let last = state.lastSample.get(key);
      if (!last || last.step !== disk.step) {
        const timing = (disk.timings || []).filter((t) => t.step === disk.step).pop();
        const started = timing ? Date.parse(timing.startedAt) : NaN;
        last = isNaN(started) ? null : { t: started, done: 0, step: disk.step };
      }
      if (last && now - last.t < 100) return;
      state.lastSample.set(key, { t: now, done, step: disk.step });
      if (!last || done <= 0 || done < last.done) return;
      const points = state.rates.get(key) || [];
      points.push({ t: now, rate: ((done - last.done) * 1000) / (now - last.t) });
      state.rates.set(key, points.slice(-RATE_POINTS));
    });
  }

  /** A small line of the disk's copy rate over time, the latest rate written beside it; nothing until there is a rate. */
  function rateChart(key) {
    const points = state.rates.get(key) || [];
    if (points.length === 0) return h("div", { class: "rate" });
    const width = 96, height = 22;
    const top = Math.max(...points.map((p) => p.rate), 1);
    const first = points[0].t, span = Math.max(points[points.length - 1].t - first, 1);
    const xy = (points.length === 1 ? [points[0], points[0]] : points).map((p, i) => {
      const x = points.length === 1 ? i * width : ((p.t - first) / span) * width;
      return x.toFixed(1) + "," + (height - 1 - (p.rate / top) * (height - 2)).toFixed(1);
    });
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "rate-chart");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(height));
    svg.setAttribute("data-points", String(points.length));
    svg.setAttribute("aria-label", "copy rate over the last " + points.length + " updates, up to " + bytes(top) + "/s");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", xy.join(" "));
    svg.append(line);
    return h("div", { class: "rate" }, svg, h("span", { class: "rate-now" }, bytes(points[points.length - 1].rate) + "/s"));
  }

  // ---------- rendering ----------

  /** Builds an element; strings become text nodes (never HTML). */
  function h(tag, attributes, ...children) {
    const element = document.createElement(tag);
    Object.entries(attributes || {}).forEach(([key, value]) => {
      if (value === null || value === undefined || value === false) return;
      if (key === "class") element.className = value;
      else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
      else element.setAttribute(key, value === true ? "" : String(value));
    });
    children.flat().forEach((child) => {
      if (child === null || child === undefined || child === false) return;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    });
    return element;
  }

  function bytes(n) {
    if (n === null || n === undefined || isNaN(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = Number(n);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
    return (unit === 0 ? value.toFixed(0) : value.toFixed(value < 10 ? 1 : 0)) + " " + units[unit];
  }

  function shortId(id) { return id ? String(id).slice(0, 8) : "–"; }

  function time(iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleTimeString();
  }

  function domainName(id) {
    const domain = state.domains.find((d) => d.id === id);
    return domain ? domain.name : shortId(id);
  }

  function vmName(id) {
    const vm = state.vms.find((v) => v.id === id);
    return vm ? vm.name : shortId(id);
  }

  function humanStep(step) {
    return step ? step.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/^./, (c) => c.toUpperCase()).replace(/ ([A-Z])/g, (m, c) => " " + c.toLowerCase()) : "";
  }

  function statusKind(migration) {
    const status = migration.status || "";
    if (status === "completed") return "ok";
    if (status.startsWith("suspended") || status.startsWith("rolling back")) return "warn";
    if (migration.finished) return "bad";
    return "run";
  }

  const byText = (key) => (a, b) => String(key(a) || "").localeCompare(String(key(b) || ""));

  function render() {
    // A stable order whatever order the Coordinator lists them in.
    state.hosts.sort(byText((x) => x.id));
    state.domains.sort(byText((x) => x.name));
    state.vms.sort(byText((x) => x.name));
    renderHosts();
    renderDomains();
    renderVms();
    renderMigrations();
  }

  function emptyRow(columns, text) {
    return h("tr", { class: "empty" }, h("td", { colspan: columns }, text));
  }

  function renderHosts() {
    const body = document.querySelector("#hosts tbody");
    const rows = state.hosts.map((host) => {
      const role = host.spm === true ? h("span", { class: "pill pill-spm", title: "Runs the SPM now" }, "SPM")
        : host.spm === null && host.spmCapable ? h("span", { class: "pill pill-spm", title: "SPM-capable (this Coordinator does not say which host runs the SPM now)" }, "SPM")
        : host.spmCapable ? h("span", { class: "pill pill-idle" }, "SPM-capable") : h("span", { class: "muted" }, "HSM");
      return h("tr", { "data-host": host.id },
        h("td", {}, h("strong", {}, host.id)),
        h("td", {}, role),
        h("td", {}, h("code", {}, host.address || "–")),
        h("td", { class: "num" }, host.vms ?? "–"),
        h("td", {}, time(host.lastReport)));
    });
    body.replaceChildren(...(rows.length ? rows : [emptyRow(5, "No host has reported yet.")]));
  }

  function renderDomains() {
    const body = document.querySelector("#domains tbody");
    const rows = state.domains.map((domain) => {
      const used = Number(domain.usedBytes) || 0;
      const capacity = Number(domain.capacityBytes) || 0;
      const share = capacity > 0 ? Math.min(100, (100 * used) / capacity) : 0;
      const kind = share > 90 ? "bad" : share > 75 ? "warn" : "";
      return h("tr", { "data-domain": domain.id },
        h("td", {}, h("strong", {}, domain.name), h("div", { class: "muted mono" }, shortId(domain.id))),
        h("td", {}, domain.kind),
        h("td", {}, domain.active ? h("span", { class: "pill pill-ok" }, "active")
          : h("span", { class: "pill pill-idle", title: (domain.unreachableFrom || []).length ? "not reachable from " + domain.unreachableFrom.join(", ") : "" },
              (domain.unreachableFrom || []).length ? "inactive: " + domain.unreachableFrom.join(", ") : "inactive")),
        h("td", {}, h("div", { class: "usage" },
          h("div", { class: "bar " + kind, role: "progressbar", "aria-valuenow": share.toFixed(0), "aria-valuemin": 0, "aria-valuemax": 100 },
            h("span", { style: "width:" + share.toFixed(1) + "%" })),
          h("small", {}, bytes(used) + " used · " + bytes(domain.availableBytes) + " free of " + bytes(capacity)))));
    });
    body.replaceChildren(...(rows.length ? rows : [emptyRow(4, "No storage domain is known yet.")]));
  }

  function renderVmPager() {
    const page = state.vmPage;
    const info = document.getElementById("vm-page-info");
    const shown = state.vms.length;
    if (page.total === null) info.textContent = shown + " VMs";
    else if (page.total === 0) info.textContent = page.filter ? "no VM matches" : "no VMs";
    else info.textContent = (page.offset + 1) + "–" + (page.offset + shown) + " of " + page.total + " VMs" + (page.filter ? " matching" : "");
    document.getElementById("vm-page-prev").disabled = page.offset === 0;
    document.getElementById("vm-page-next").disabled = page.total === null || page.offset + shown >= page.total;
  }

  function showVmPage(offset) {
    state.vmPage.offset = Math.max(0, offset);
    refreshAll();
  }

  document.getElementById("vm-page-prev").addEventListener("click", () => showVmPage(state.vmPage.offset - VM_PAGE));
  document.getElementById("vm-page-next").addEventListener("click", () => showVmPage(state.vmPage.offset + VM_PAGE));
  let filterTimer = null;
  document.getElementById("vm-filter").addEventListener("input", (event) => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      state.vmPage.filter = event.target.value.trim();
      showVmPage(0);
    }, 250);
  });

  /**
   * A disk whose chain lies on more than its leaf's domain (an abandoned post-copy's): only a post-copy to the leaf's
   * domain moves it, and it keeps the older layers' domain in use until then.
   */
  function olderLayerDomains(disk) {
    return [...new Set(disk.chain.map((layer) => layer.domain).filter((domain) => domain && domain !== disk.domain))];
  }

  function splitPill(disk) {
    const others = olderLayerDomains(disk);
    if (!others.length) return null;
    return h("span", {
      class: "pill pill-warn split",
      title: "Older layers on " + others.map(domainName).join(", ") + ": a post-copy to " + domainName(disk.domain) + " makes it whole",
    }, "split");
  }

  function renderVms() {
    renderVmPager();
    const list = document.getElementById("vms");
    if (!state.vms.length) {
      list.replaceChildren(h("p", { class: "muted" }, state.vmPage.filter ? "No VM's name, id or host contains \u201c" + state.vmPage.filter + "\u201d." : "No VM is known yet."));
      return;
    }
    list.replaceChildren(...state.vms.map((vm) => {
      const disks = vm.disks.map((disk) => {
        const active = disk.migration && state.migrations.get(disk.migration);
        const moving = disk.migration && (!active || !active.finished);
        const chain = h("div", { class: "chain" }, ...disk.chain.flatMap((layer, index) => [
          index > 0 ? h("span", { class: "arrow", "aria-hidden": "true" }, "→") : null,
          h("span", { class: "layer" + (index === disk.chain.length - 1 ? " leaf" : ""), title: "volume " + layer.volume + " on " + layer.domain },
            domainName(layer.domain)),
        ]));
        const move = h("button", {
          type: "button", class: "button small primary move", disabled: !vm.running || moving,
          title: !vm.running ? "The VM is not running" : moving ? "This disk is moving already" : "Move this disk to another storage domain",
          onclick: () => openMove(vm, disk),
        }, "Move");
        return h("tr", { "data-disk": disk.image },
          h("td", {}, h("code", {}, shortId(disk.image)), h("div", { class: "muted mono" }, disk.image)),
          h("td", { class: "num" }, bytes(disk.capacityBytes)),
          h("td", { class: "disk-domain" }, domainName(disk.domain), splitPill(disk)),
          h("td", {}, chain),
          h("td", {}, moving ? h("span", { class: "pill pill-run" }, "moving") : move));
      });
      return h("article", { class: "vm", "data-vm": vm.id },
        h("div", { class: "vm-head" },
          h("strong", {}, vm.name),
          vm.running ? h("span", { class: "pill pill-ok" }, "running") : h("span", { class: "pill pill-idle" }, "stopped"),
          h("span", { class: "muted" }, "on " + (vm.host || "–")),
          h("code", { class: "muted" }, vm.id)),
        h("div", { class: "table-wrap" }, h("table", { class: "disks" },
          h("thead", {}, h("tr", {}, h("th", {}, "Disk (image)"), h("th", { class: "num" }, "Size"), h("th", {}, "Domain"), h("th", {}, "Chain (base → leaf)"), h("th", {}, ""))),
          h("tbody", {}, ...(disks.length ? disks : [emptyRow(5, "No disks.")])))));
    }));
  }

  function renderMigrations() {
    const list = document.getElementById("migrations");
    const migrations = [...state.migrations.values()].sort((a, b) => String(b.requestedAt || "").localeCompare(String(a.requestedAt || "")));
    if (!migrations.length) {
      list.replaceChildren(h("p", { class: "muted" }, "No migrations yet."));
      return;
    }
    const shown = migrations.slice(0, MIGRATIONS_SHOWN);
    const total = Math.max(state.migrationTotal || 0, migrations.length);
    const more = total > shown.length
      ? [h("p", { class: "muted", "data-migrations-more": total }, "The " + shown.length + " newest of " + total + " migrations; lsm migrations lists them all.")]
      : [];
    list.replaceChildren(...shown.map(renderMigration), ...more);
  }

  function renderMigration(m) {
    const kind = statusKind(m);
    const disks = m.disks.map((disk) => {
      const total = Number(disk.total) || 0;
      const progressKey = m.id + "/" + disk.image + "/" + (disk.step || "");
      const measured = m.status === "completed" ? 100 : total > 0 ? Math.min(100, (100 * Number(disk.done)) / total) : 0;
      const percent = Math.max(state.shownProgress.get(progressKey) || 0, measured);
      state.shownProgress.set(progressKey, percent);
      // What people read is what is left, not a share of a total that grows under a writing guest.
      const left = m.status === "completed" ? "done" : total > 0 ? bytes(Math.max(0, total - Number(disk.done))) + " left" : "";
      // A finished disk's last step (the source's deletion) copied nothing: say what all its steps copied instead.
      const copied = disk.phase === "Completed" && Number(disk.copied) > 0 ? " · " + bytes(Number(disk.copied)) + " copied" : "";
      const plan = m.strategy === "post-copy" ? POST_COPY : PRE_COPY;
      const seen = new Map();
      (disk.timings || []).forEach((t) => seen.set(t.step, t));
      const names = plan.concat([...seen.keys()].filter((s) => !plan.includes(s)));
      const steps = names.map((name) => {
        const timing = seen.get(name);
        let cls = "";
        if (timing && timing.endedAt) cls = timing.outcome && !/^(ok|done|succeeded|completed)/i.test(timing.outcome) ? "failed" : "done";
        // A step still open when the migration finished was cut short by the cancel or failure: not running.
        else if (m.finished && timing) cls = "interrupted";
        else if (!m.finished && (timing || disk.step === name)) cls = "running";
        return h("li", { class: cls, title: timing && timing.outcome ? timing.outcome : "" }, humanStep(name));
      });
      return h("div", { class: "migration-disk-block", "data-disk": disk.image },
        h("div", { class: "migration-disk" },
          h("div", {}, h("code", {}, shortId(disk.image)), " ", h("span", { class: "muted" }, domainName(disk.source) + " → " + domainName(disk.destination))),
          h("div", { class: "bar " + (kind === "run" ? "" : kind), role: "progressbar", "aria-valuenow": percent.toFixed(0), "aria-valuemin": 0, "aria-valuemax": 100 },
            h("span", { style: "width:" + percent.toFixed(1) + "%" })),
          h("div", { class: "pct" }, left),
          rateChart(m.id + "/" + disk.image)),
        h("div", { class: "muted" }, disk.phase + (disk.step ? " · " + humanStep(disk.step) : "")
          + (copied || (total > 0 ? " · " + bytes(disk.done) + " of " + bytes(total) : ""))
          + (disk.remainingSeconds ? " · ~" + Math.ceil(disk.remainingSeconds) + " s left" : "")),
        h("ul", { class: "steps" }, ...steps),
        disk.lastError ? h("p", { class: "error" }, disk.lastError) : null);
    });
    const limit = Number(m.bandwidthBytesPerSecond) > 0 ? " · limit " + bytes(Number(m.bandwidthBytesPerSecond)) + "/s" : "";
    const actionError = state.actionErrors.get(m.id);
    return h("article", { class: "migration " + kind, "data-migration": m.id, "data-events": state.streamEvents.get(m.id) || 0 },
      h("div", { class: "migration-head" },
        h("strong", {}, "Migration " + shortId(m.id)),
        h("span", { class: "pill pill-" + kind + " status" }, m.status),
        h("span", { class: "muted" }, vmName(m.vm) + " · " + m.strategy + " · requested " + time(m.requestedAt) + (m.finishedAt ? " · finished " + time(m.finishedAt) : "") + limit),
        ...migrationActions(m)),
      ...disks,
      m.error ? h("p", { class: "error migration-error" }, m.error) : null,
      actionError ? h("p", { class: "error action-error" }, actionError) : null);
  }

  // ---------- a migration's actions: what lsm migration set-speed, cancel, resume and abandon do ----------

  /** The buttons an unfinished migration offers: its speed and a cancel while it runs; resume and abandon once suspended. */
  function migrationActions(m) {
    if (m.finished) return [];
    const button = (name, title, run) => h("button", {
      type: "button", class: "button small migration-action", "data-action": name, title,
      onclick: () => run(m),
    }, name);
    const suspended = String(m.status || "").startsWith("suspended");
    return suspended
      ? [button("Resume", "Run the failed step again", (mig) => act(mig, "resume")),
         button("Abandon", "Leave the disks where they run now and end the migration", (mig) =>
           confirm("Abandon migration " + shortId(mig.id) + "? Each disk stays where it runs now; what is left behind is listed.") && act(mig, "abandon"))]
      : [button("Speed", "Change the copy speed limit", setSpeed),
         button("Cancel", "Stop and undo the disks not past their point of no return", (mig) =>
           confirm("Cancel migration " + shortId(mig.id) + "? Disks not past their point of no return go back to their source.") && act(mig, "cancel"))];
  }

  function setSpeed(m) {
    const now = Number(m.bandwidthBytesPerSecond) > 0 ? String(Math.round(Number(m.bandwidthBytesPerSecond) / 1048576 * 10) / 10) : "0";
    const answer = prompt("Copy speed limit of migration " + shortId(m.id) + " in MiB/s (0 = none):", now);
    if (answer === null) return;
    const mebibytes = Number(answer.trim());
    if (answer.trim() === "" || !isFinite(mebibytes) || mebibytes < 0) {
      showActionError(m.id, "'" + answer + "' is not a speed in MiB/s (0 = none)");
      return;
    }
    act(m, "speed", { bytesPerSecond: Math.round(mebibytes * 1048576) });
  }

  async function act(m, action, body) {
    state.actionErrors.delete(m.id);
    try {
      const response = await api("/api/migrations/" + encodeURIComponent(m.id) + "/" + action, {
        method: "POST",
        headers: body ? { "Content-Type": "application/json" } : {},
        body: body ? JSON.stringify(body) : undefined,
      });
      if (!response.ok) {
        showActionError(m.id, await errorText(response));
        return;
      }
      const current = await getJson("/api/migrations/" + encodeURIComponent(m.id));
      if (current) state.migrations.set(m.id, current);
      render();
    } catch (failure) {
      showActionError(m.id, "The request failed: " + failure.message);
    }
  }

  function showActionError(id, text) {
    state.actionErrors.set(id, text);
    render();
  }

  function showBanner(text) {
    const banner = document.getElementById("banner");
    banner.hidden = !text;
    banner.textContent = text || "";
  }

  // ---------- the Move dialog ----------

  let moving = null;

  function openMove(vm, disk) {
    moving = { vm, disk };
    // A split disk (an abandoned post-copy's) has one move: a post-copy to its leaf's domain, which makes it whole
    // (the Coordinator refuses any other with CHAIN_SPANS_DOMAINS).
    const split = olderLayerDomains(disk);
    document.getElementById("move-subject").textContent = split.length
      ? "Disk " + disk.image + " of " + vm.name + " runs on " + domainName(disk.domain) + " over older layers on " +
        split.map(domainName).join(", ") + ": a post-copy to " + domainName(disk.domain) + " makes it whole, and is its only move."
      : "Disk " + disk.image + " of " + vm.name + ", now on " + domainName(disk.domain) + ".";
    const strategy = document.getElementById("move-strategy");
    if (split.length) strategy.value = "post-copy";
    strategy.disabled = split.length > 0;
    const select = document.getElementById("move-destination");
    const choices = state.domains.filter((d) => split.length ? d.id === disk.domain : d.id !== disk.domain);
    select.replaceChildren(...choices.map((d) => h("option", { value: d.id, disabled: !d.active },
      d.name + " — " + bytes(d.availableBytes) + " free" + (d.active ? "" : " (inactive)"))));
    const firstActive = choices.find((d) => d.active);
    if (firstActive) select.value = firstActive.id;
    document.getElementById("move-error").hidden = true;
    document.getElementById("move-submit").disabled = !firstActive;
    document.getElementById("move-dialog").showModal();
  }

  document.getElementById("move-cancel").addEventListener("click", () => document.getElementById("move-dialog").close());

  document.getElementById("move-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!moving) return;
    const submit = document.getElementById("move-submit");
    const error = document.getElementById("move-error");
    const mebibytes = Number(document.getElementById("move-bandwidth").value) || 0;
    const body = {
      vm: moving.vm.id,
      disks: [{ image: moving.disk.image, destination: document.getElementById("move-destination").value }],
      strategy: document.getElementById("move-strategy").value,
      bandwidthBytesPerSecond: Math.max(0, Math.round(mebibytes * 1024 * 1024)),
      copyMode: document.getElementById("move-copy-mode").value,
    };
    submit.disabled = true;
    try {
      const response = await api("/api/migrations", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        error.textContent = await errorText(response);
        error.hidden = false;
        return;
      }
      const started = await response.json();
      remember(started.id);
      moving.disk.migration = started.id;
      document.getElementById("move-dialog").close();
      const current = await getJson("/api/migrations/" + encodeURIComponent(started.id));
      if (current && !state.migrations.has(started.id)) state.migrations.set(started.id, current);
      render();
    } catch (failure) {
      error.textContent = "The request failed: " + failure.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  document.getElementById("refresh").addEventListener("click", refreshAll);

  // ---------- start ----------

  refreshAll();
  followEvents();
  // Hosts and domains report without events: look again now and then.
  setInterval(() => { if (!document.hidden) refreshAll(); }, 10000);
})();
