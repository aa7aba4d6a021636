// pushproxy web authenticator: the service worker. It turns a Web Push message
// (the JSON of one pending request) into a notification, hands it to any open
// window of the app, and opens or focuses the app when the notification is
// tapped.
//
// It also keeps a copy of the app's own files (nothing else: no API answer,
// nothing about the user) so that the app opens on a phone without a
// connection, to show its offline code. The network always comes first: the
// copy is used only when the server cannot be reached, or takes longer than
// NETWORK_GRACE_MS, so the app runs its stale code only when there is no
// server to run it against.
"use strict";

importScripts("common.js");

// The API is served at the public URL; the app (and this file) at {public_url}/app/.
const API_BASE = new URL("../", self.location.href).href;
const APP_URL = new URL("./", self.location.href).href;

const CACHE = "pushproxy-app-v1";
// What the app needs to start (index.html is what "./" answers).
const APP_FILES = ["./", "common.js", "passkey.js", "app.js", "style.css", "manifest.webmanifest",
  "icons/icon.svg", "icons/icon-192.png"];
const NETWORK_GRACE_MS = 5000;
const INSTALL_GRACE_MS = 10000;

/** promise, or fallback once ms have passed (the promise keeps running). */
function within(promise, ms, fallback) {
  let timer;
  const late = new Promise((resolve) => { timer = setTimeout(resolve, ms, fallback); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Copy the app's files (best effort: a file that fails is copied at its next load). */
async function keepAppFiles() {
  const cache = await caches.open(CACHE);
  await Promise.allSettled(APP_FILES.map(async (path) => {
    const response = await fetch(new URL(path, APP_URL), { cache: "no-store" });
    if (response.status === 200) await cache.put(new URL(path, APP_URL), response);
  }));
}

self.addEventListener("install", (event) => {
  self.skipWaiting();
  // Never held up for long: without its copy the worker still delivers pushes.
  event.waitUntil(within(keepAppFiles(), INSTALL_GRACE_MS, null).catch(() => {}));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name !== CACHE) await caches.delete(name); // an older layout's copy
    }
    await self.clients.claim();
  })());
});

/** The network's answer (and a fresh copy of it); the copy if the network fails or is slow. */
async function networkFirst(event, url) {
  const request = event.request;
  const network = fetch(request).then((response) => {
    if (response.status === 200 && response.type === "basic") {
      const copy = response.clone();
      const kept = caches.open(CACHE).then((cache) => cache.put(url, copy)).catch(() => {});
      try {
        event.waitUntil(kept);
      } catch (err) {
        // The copy answered already and the event is over: kept is written all the same.
      }
    }
    return response;
  });
  network.catch(() => {}); // handled below; no "uncaught" report if the copy answered
  // The app's pages (./, ./enroll) are all index.html.
  const copy = async () => (await caches.match(url)) ||
    (request.mode === "navigate" ? caches.match(APP_URL) : undefined);
  try {
    const answer = await within(network, NETWORK_GRACE_MS, null);
    if (answer) return answer;
    return (await copy()) || await network; // slow, and no copy: wait for the network
  } catch (err) {
    const kept = await copy();
    if (kept) return kept;
    throw err; // the page sees the network error, as without a worker
  }
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  url.hash = "";
  // Only the app's own files: the API (../v1/) always goes straight to the network.
  if (event.request.method !== "GET" || url.origin !== self.location.origin ||
      !url.href.startsWith(APP_URL) || url.search) {
    return;
  }
  event.respondWith(networkFirst(event, url.href));
});

function describe(request) {
  const parts = [];
  if (request.application) parts.push(request.application);
  if (request.client_ip) parts.push(`from ${request.client_ip}`);
  if (request.location && typeof request.location.label === "string") {
    parts.push(`(${request.location.label.slice(0, 160)})`);
  }
  if (request.nas) parts.push(`via ${request.nas}`);
  return `${request.username}: ${parts.join(" ") || "sign-in"}`;
}

async function windows() {
  return self.clients.matchAll({ type: "window", includeUncontrolled: true });
}

self.addEventListener("push", (event) => {
  let request = null;
  try {
    request = event.data ? event.data.json() : null;
  } catch (err) {
    request = null;
  }
  event.waitUntil((async () => {
    // Open windows pick the request up at once (they also refresh their list).
    for (const client of await windows()) {
      client.postMessage({ type: "push", request });
    }
    // Browsers require a visible notification for every push message
    // (userVisibleOnly), so one is shown even for a payload we cannot read.
    const valid = PP.isRequest(request);
    await self.registration.showNotification("Are you trying to sign in?", {
      body: valid ? describe(request) : "Open the app to see the request.",
      tag: valid ? request.txid : "pushproxy-request",
      data: valid ? request : null,
      icon: "icons/icon-192.png",
      badge: "icons/icon-192.png",
      requireInteraction: true,
      timestamp: valid ? Math.round(request.created * 1000) : Date.now(),
    });
  })());
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const request = event.notification.data;
  event.waitUntil((async () => {
    for (const client of await windows()) {
      if (client.url.startsWith(APP_URL) && "focus" in client) {
        await client.focus();
        client.postMessage({ type: "show", request });
        return;
      }
    }
    // No window of the app is open: open one; it loads the pending requests itself.
    await self.clients.openWindow(APP_URL);
  })());
});

// The push service replaced or dropped the subscription: subscribe again with
// the same VAPID key and tell the server, signing with the stored device key.
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil((async () => {
    const device = await PP.loadDevice();
    if (!device) return;
    const info = await PP.call(API_BASE, "GET", "v1/info");
    PP.learnServerTime(info.server_time);
    let subscription = null;
    try {
      subscription = await self.registration.pushManager.subscribe({
        userVisibleOnly: true, applicationServerKey: PP.b64uDecode(info.vapid_public_key),
      });
    } catch (err) {
      subscription = null; // long-poll only until the app subscribes again
    }
    await PP.putSubscription(API_BASE, device, subscription);
    device.pushEndpoint = subscription ? subscription.endpoint : null;
    await PP.saveDevice(device);
  })());
});
