// pushproxy web authenticator: the service worker. It turns a Web Push message
// (the JSON of one pending request) into a notification, hands it to any open
// window of the app, and opens or focuses the app when the notification is
// tapped. It caches nothing: the app is useless without the server anyway, and
// an uncached app can never run stale code against a newer server.
"use strict";

importScripts("common.js");

// The API is served at the public URL; the app (and this file) at {public_url}/app/.
const API_BASE = new URL("../", self.location.href).href;
const APP_URL = new URL("./", self.location.href).href;

self.addEventListener("install", () => {
  self.skipWaiting();
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

function describe(request) {
  const parts = [];
  if (request.application) parts.push(request.application);
  if (request.client_ip) parts.push(`from ${request.client_ip}`);
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
