// pushproxy web authenticator: the page. Enrollment from a one-time link, then
// the approval screen for every sign-in request of the user, learnt by
// long-poll while the page is open and by Web Push (through sw.js) otherwise.
// The protocol is docs/approval-protocol.md; PP (common.js) speaks it.
"use strict";

// The app lives at {public_url}/app/, the API at {public_url}/v1/. Both are
// derived from where this script was loaded, so a reverse proxy may publish the
// whole thing under a path prefix.
const APP_URL = new URL("./", document.currentScript.src).href;
const API_BASE = new URL("../", document.currentScript.src).href;

const POLL_WAIT = 25; // seconds the server may hold a long-poll
const POLL_TIMEOUT_MS = (POLL_WAIT + 15) * 1000; // give up on a long-poll that hangs
// While a request is open the server answers a long-poll at once, so the app
// re-checks at this pace to notice answers from another device.
const OPEN_POLL_MS = 2000;
const MAX_BACKOFF_MS = 30000;
// How long enrollment waits for a Web Push subscription before it enrolls
// without one; a subscription that comes later is sent with a signed PUT.
// (Without a reachable push service, subscribe() may never settle.)
const SUBSCRIBE_GRACE_MS = 3000;
const RESULT_MS = 4000; // how long "Approved" / "Denied" stays before the list returns

const $ = (id) => document.getElementById(id);

const state = {
  device: null, // the record from IndexedDB (PP.loadDevice)
  token: null, // the enrollment token of the link that opened the app
  requests: new Map(), // txid -> open request, as the server lists them
  done: new Set(), // txids answered here or expired: never shown again
  current: null, // txid on screen
  result: null, // {title, detail, code, keep} shown after an answer
  numberFor: null, // txid whose number the number field holds
  resultTimer: null,
  answering: false,
  polling: false,
  pollController: null,
  quickPoll: true, // next poll asks with wait=0 (start, after a push or an answer)
  revoked: false,
  screen: "loading",
  ticker: null,
  codeView: false, // the user asked for the offline code (until Back)
  codeStep: null, // the TOTP step whose code is on screen
  codeTimer: null,
};

// -- screens --

function show(name, { focus = true } = {}) {
  for (const section of document.querySelectorAll("main > section.screen")) {
    section.hidden = section.id !== `screen-${name}`;
  }
  const changed = state.screen !== name;
  state.screen = name;
  // Move focus to the new screen's heading, so keyboard and screen-reader users
  // start reading where the content changed.
  if (focus && changed) {
    const heading = document.querySelector(`#screen-${name} h1`);
    if (heading) heading.focus({ preventScroll: false });
  }
}

function announce(text) {
  // Cleared first so the same text twice is still read out.
  const region = $("announce");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50);
}

function describeError(err) {
  if (err instanceof PP.ApiError) {
    if (err.status >= 500) return "The server has a problem right now.";
    return err.message || `The server refused (${err.code}).`;
  }
  if (err && err.name === "TypeError") return "The server can't be reached. Check your connection.";
  return (err && err.message) || "Something went wrong.";
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(new DOMException("aborted", "AbortError"));
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new DOMException("aborted", "AbortError"));
      }, { once: true });
    }
  });
}

/** promise, or fallback once ms have passed (the promise keeps running). */
function within(promise, ms, fallback) {
  return Promise.race([promise, new Promise((resolve) => setTimeout(() => resolve(fallback), ms))]);
}

// -- start --

function supported() {
  return window.isSecureContext && window.crypto && crypto.subtle && window.indexedDB;
}

function pushSupported() {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

/** The token of an enrollment link ({public_url}/app/enroll#TOKEN), or null. */
function linkToken(url) {
  if (!url.pathname.endsWith("/enroll") || url.hash.length < 2) return null;
  try {
    return decodeURIComponent(url.hash.slice(1));
  } catch (err) {
    return url.hash.slice(1); // a mangled link: the server refuses it, the app says so
  }
}

async function start() {
  if (!supported()) {
    show("unsupported");
    return;
  }
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.addEventListener("message", onWorkerMessage);
    navigator.serviceWorker.startMessages();
    navigator.serviceWorker.register("sw.js", { scope: "./" }).catch(() => {
      // No service worker (private mode, old browser): long-poll only.
    });
  }
  wireButtons();
  state.token = linkToken(new URL(location.href));
  try {
    state.device = (await PP.loadDevice()) || null;
  } catch (err) {
    $("unsupported-detail").textContent =
      `The app can't use this browser's storage: ${err.message}`;
    show("unsupported");
    return;
  }
  if (state.token) {
    if (state.device) {
      $("already-user").textContent = state.device.username;
      $("already-name").textContent = state.device.name;
      show("already");
    } else {
      showEnroll(false);
    }
    return;
  }
  if (!state.device) {
    show("not-enrolled");
    return;
  }
  startApproving(false);
}

function wireButtons() {
  $("enroll-button").addEventListener("click", () => enroll());
  $("device-name").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !$("enroll-button").disabled) enroll();
  });
  $("already-open").addEventListener("click", () => {
    history.replaceState(null, "", APP_URL);
    state.token = null;
    startApproving(false);
  });
  $("already-replace").addEventListener("click", () => showEnroll(true));
  $("link-button").addEventListener("click", openPastedLink);
  $("link-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") openPastedLink();
  });
  $("notify-button").addEventListener("click", turnOnNotifications);
  $("approve").addEventListener("click", () => answer("approve"));
  $("passkey-button").addEventListener("click", () => setUpPasskey());
  $("request-number").addEventListener("keydown", (event) => {
    if (event.key === "Enter") answer("approve");
  });
  $("deny").addEventListener("click", () => showDenyChoices(true));
  $("deny-back").addEventListener("click", () => showDenyChoices(false));
  $("deny-only").addEventListener("click", () => answer("deny"));
  $("report-fraud").addEventListener("click", () => answer("fraud"));
  $("result-ok").addEventListener("click", dismissResult);
  $("show-code").addEventListener("click", () => showCode(true));
  $("add-device").addEventListener("click", addDevice);
  $("code-back").addEventListener("click", () => showCode(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.screen === "code") showCode(false);
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    kickPoll();
    if (state.screen === "code") updateCode(); // timers sleep in a hidden page
  });
  window.addEventListener("online", kickPoll);
  // Another enrollment link opened in this same page: start over with it.
  window.addEventListener("hashchange", () => location.reload());
}

function openPastedLink() {
  const status = $("link-status");
  let url;
  try {
    url = new URL($("link-input").value.trim());
  } catch (err) {
    status.textContent = "That is not a link. Paste the whole setup link.";
    return;
  }
  if (url.origin !== location.origin || !url.href.startsWith(APP_URL) || !linkToken(url)) {
    status.textContent = "That is not a setup link of this server. Open it directly instead.";
    return;
  }
  location.assign(url.href);
}

// -- enrollment --

function defaultDeviceName() {
  const agent = navigator.userAgent;
  if (/iPhone/.test(agent)) return "iPhone";
  if (/iPad/.test(agent)) return "iPad";
  if (/Android/.test(agent)) return "Android phone";
  return "Web browser";
}

/** A name the server takes: 1-64 printable characters, single spaces. */
function cleanName(text) {
  return text.replace(/[\p{C}]/gu, "").replace(/\s+/gu, " ").trim().slice(0, 64);
}

/** Which of the enrollment screen's per-platform instructions fits this browser. */
function platformHelp() {
  const agent = navigator.userAgent;
  // iPadOS 13+ says "Macintosh"; only a touch screen tells it from a Mac.
  if (/iPhone|iPad|iPod/.test(agent) || (/Macintosh/.test(agent) && navigator.maxTouchPoints > 1)) {
    return "help-ios";
  }
  if (/Android/.test(agent)) return "help-android";
  return "help-desktop";
}

function showEnroll(replacing) {
  $(platformHelp()).open = true;
  $("enroll-replacing").hidden = !replacing;
  if (!$("device-name").value) $("device-name").value = defaultDeviceName();
  $("enroll-status").textContent = "";
  show("enroll");
}

async function askNotificationPermission() {
  if (!("Notification" in window)) return "unsupported";
  if (Notification.permission !== "default") return Notification.permission;
  try {
    return await Notification.requestPermission();
  } catch (err) {
    return "default";
  }
}

/** A push subscription for the server's VAPID key (reused if it already has one). */
async function subscribePush(vapidPublicKey) {
  if (!pushSupported()) return null;
  const registration = await navigator.serviceWorker.ready;
  const key = PP.b64uDecode(vapidPublicKey);
  const existing = await registration.pushManager.getSubscription();
  if (existing) {
    const current = existing.options && existing.options.applicationServerKey;
    if (current && PP.b64uEncode(current) === vapidPublicKey) return existing;
    await existing.unsubscribe();
  }
  return registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
}

async function enroll() {
  const button = $("enroll-button");
  const status = $("enroll-status");
  const name = cleanName($("device-name").value);
  if (!name) {
    status.textContent = "Give this device a name.";
    $("device-name").focus();
    return;
  }
  button.disabled = true;
  status.textContent = "Setting up…";
  try {
    // First, while the tap still counts as a user gesture: browsers only show
    // the permission prompt in response to one.
    const permission = await askNotificationPermission();
    const info = await PP.call(API_BASE, "GET", "v1/info");
    PP.learnServerTime(info.server_time);
    const keys = await PP.generateKeyPair();
    const publicKey = await PP.exportPublicKey(keys.publicKey);
    const pushing = permission === "granted"
      ? subscribePush(info.vapid_public_key).catch(() => null) : Promise.resolve(null);
    const subscription = await within(pushing, SUBSCRIBE_GRACE_MS, null);
    const signature = await PP.sign(keys.privateKey, PP.enrollText(state.token, publicKey, name));
    const enrolled = await PP.call(API_BASE, "POST", "v1/enroll", {
      body: {
        token: state.token, public_key: publicKey, name,
        push_subscription: PP.subscriptionJson(subscription), signature,
      },
    });
    const device = {
      deviceId: enrolled.device_id, username: enrolled.username, name, publicKey,
      privateKey: keys.privateKey, totpKey: await totpKeyOf(enrolled),
      pushEndpoint: subscription ? subscription.endpoint : null, enrolled: Date.now(),
    };
    await PP.saveDevice(device);
    state.device = device;
    state.revoked = false;
    state.token = null;
    // The used link leaves the address bar (and what an installed app reopens).
    history.replaceState(null, "", APP_URL);
    if (!subscription && permission === "granted") {
      pushing.then((late) => late && attachSubscription(late)).catch(() => {});
    }
    startApproving(true);
    // The passkey for presence, right away (the main screen offers it again if
    // this fails or the user cancels).
    setUpPasskey({ quiet: true });
  } catch (err) {
    if (err instanceof PP.ApiError && err.code === "invalid_enrollment") {
      show("enroll-invalid");
      return;
    }
    status.textContent = `Setup failed: ${describeError(err)}`;
  } finally {
    button.disabled = false;
  }
}

/**
 * The enroll answer's TOTP secret as a non-extractable key, or null (a server
 * that sends none, or a secret that is not base32: the device is enrolled
 * anyway, without offline codes). Only the key is kept, never the secret.
 */
async function totpKeyOf(enrolled) {
  const secret = enrolled.totp_secret;
  delete enrolled.totp_secret;
  delete enrolled.otpauth_uri;
  if (typeof secret !== "string") return null;
  try {
    return await PP.importTotpSecret(secret);
  } catch (err) {
    return null;
  }
}

async function attachSubscription(subscription) {
  await PP.putSubscription(API_BASE, state.device, subscription);
  state.device.pushEndpoint = subscription ? subscription.endpoint : null;
  await PP.saveDevice(state.device);
}

/** Keep the server's copy of this device's push subscription current (best effort). */
async function syncPush() {
  if (!pushSupported() || Notification.permission !== "granted" || !state.device) return;
  try {
    const info = await PP.call(API_BASE, "GET", "v1/info");
    const subscription = await subscribePush(info.vapid_public_key);
    if (subscription && subscription.endpoint !== state.device.pushEndpoint) {
      await attachSubscription(subscription);
    }
  } catch (err) {
    // Stays on long-poll; tried again at the next start.
  }
}

/** "Add another device": this device signs the request for a one-time setup link. */
async function addDevice() {
  const status = $("add-device-status");
  status.textContent = "Making a setup link…";
  try {
    const body = {};
    if (state.device.passkey) {
      // a phone with a passkey adds another only with its face or fingerprint
      const assertion = await PK.assert(API_BASE, state.device, null);
      if (assertion) body.webauthn = assertion;
    }
    const answer = await PP.call(API_BASE, "POST", "v1/device/enrollment",
      { body, device: state.device });
    $("add-device-qr").src = answer.qr;
    $("add-device-link").textContent = answer.link;
    $("add-device-link").href = answer.link;
    $("add-device-expires").textContent = new Date(answer.expires * 1000).toLocaleTimeString();
    $("add-device-box").hidden = false;
    status.textContent = "";
  } catch (err) {
    status.textContent = "Could not make a setup link. Try again later.";
  }
}

async function turnOnNotifications() {
  const permission = await askNotificationPermission();
  updatePushHints();
  if (permission === "granted") syncPush();
}

function updatePushHints() {
  const box = $("notify-box");
  const hint = $("push-hint");
  box.hidden = !(pushSupported() && Notification.permission === "default");
  hint.hidden = true;
  const standalone = window.matchMedia("(display-mode: standalone)").matches;
  if (!pushSupported() && /iPhone|iPad/.test(navigator.userAgent) && !standalone) {
    hint.textContent = "On iPhone and iPad, notifications need the app on the Home Screen: " +
      "Share, then Add to Home Screen.";
    hint.hidden = false;
  } else if (pushSupported() && Notification.permission === "denied") {
    hint.textContent = "Notifications are off for this app; keep it open to see requests.";
    hint.hidden = false;
  }
}

// -- requests --

function startApproving(justEnrolled) {
  $("idle-user").textContent = state.device.username;
  $("idle-name").textContent = state.device.name;
  $("idle-enrolled").hidden = !justEnrolled;
  if (justEnrolled) {
    $("idle-enrolled").textContent = `This phone is set up for ${state.device.username}.`;
  }
  updatePushHints();
  updatePasskeyBox();
  render();
  startPolling();
  syncPush();
}

// -- presence: a platform passkey (passkey.js, docs/presence.md) --

async function updatePasskeyBox() {
  $("passkey-box").hidden = Boolean(state.device.passkey) || !(await PK.available());
}

async function setUpPasskey({ quiet = false } = {}) {
  if (state.device.passkey || !(await PK.available())) return;
  $("passkey-button").disabled = true;
  if (!quiet) $("passkey-status").textContent = "Setting up…";
  try {
    await PK.register(API_BASE, state.device);
    state.device.passkey = true;
    await PP.saveDevice(state.device);
    $("passkey-status").textContent = "Face or fingerprint is set up.";
  } catch (err) {
    if (!quiet) $("passkey-status").textContent = `Not set up: ${describeError(err)}`;
  } finally {
    $("passkey-button").disabled = false;
    updatePasskeyBox();
  }
}

function knownRequest(request) {
  return PP.isRequest(request) && !state.done.has(request.txid) &&
    request.expires > PP.serverNow();
}

function summary(request) {
  const where = request.application ? ` to ${request.application}` : "";
  const from = request.client_ip ? ` from ${request.client_ip}` : "";
  return `Sign-in request${where}${from}.`;
}

/** The server's list of open requests replaces ours. */
function setRequests(list) {
  const before = new Map(state.requests);
  state.requests = new Map();
  for (const request of list) {
    if (knownRequest(request)) state.requests.set(request.txid, request);
  }
  for (const [txid, request] of state.requests) {
    if (!before.has(txid)) announce(`New ${summary(request).toLowerCase()}`);
  }
  for (const txid of before.keys()) {
    if (!state.requests.has(txid)) {
      closeNotifications(txid);
      if (txid === state.current) announce("The request is no longer open.");
    }
  }
  render();
}

/** One request from a push message; the next poll confirms or drops it. */
function addRequest(request) {
  if (!knownRequest(request) || state.requests.has(request.txid)) return;
  state.requests.set(request.txid, request);
  announce(`New ${summary(request).toLowerCase()}`);
  render();
}

function onWorkerMessage(event) {
  const message = event.data || {};
  if (message.type !== "push" && message.type !== "show") return;
  if (state.device && PP.isRequest(message.request)) {
    addRequest(message.request);
    if (message.type === "show" && state.requests.has(message.request.txid)) {
      state.current = message.request.txid;
      dismissResult();
    }
  }
  kickPoll();
}

function closeNotifications(txid) {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.getRegistration()
    .then((registration) => registration && registration.getNotifications({ tag: txid }))
    .then((notifications) => (notifications || []).forEach((n) => n.close()))
    .catch(() => {});
}

function oldest() {
  let first = null;
  for (const request of state.requests.values()) {
    if (!first || request.created < first.created) first = request;
  }
  return first;
}

/** Show what the state says: a request, the last answer's result, or the idle screen. */
function render() {
  if (!state.device || state.revoked) return;
  if (!state.requests.has(state.current)) {
    const next = oldest();
    state.current = next ? next.txid : null;
    showDenyChoices(false, false);
    $("request-status").textContent = "";
  }
  if (state.current && !(state.result && state.result.keep)) {
    // A new request takes over from the result of the last one (not from a
    // login code: the user still has to type it).
    if (state.result) dismissResult(false);
    fillRequest(state.requests.get(state.current));
    show("request");
    startTicker();
  } else if (state.result) {
    stopTicker();
    $("result-title").textContent = state.result.title;
    $("result-detail").textContent = state.result.detail;
    $("result-code").textContent = state.result.code || "";
    $("result-code").hidden = !state.result.code;
    show("result");
  } else if (state.codeView) {
    stopTicker();
    const opening = state.screen !== "code";
    show("code");
    if (opening) fillCode();
  } else {
    stopTicker();
    show("idle");
  }
  // Only the code screen keeps its code current. (A request takes over from it;
  // once that is answered the code comes back.)
  if (state.screen !== "code") stopCodeTimer();
}

function fillRequest(request) {
  const text = (value) => (value === null || value === undefined || value === ""
    ? "—" : String(value));
  $("request-username").textContent = text(request.username);
  $("request-application").textContent = text(request.application);
  $("request-client-ip").textContent = text(request.client_ip);
  $("request-nas").textContent = text(request.nas);
  // Location and risk warnings come from the server's databases: text only, bounded.
  const location = request.location && typeof request.location.label === "string"
    ? request.location.label.slice(0, 160) : null;
  $("request-location").textContent = text(location);
  const warnings = Array.isArray(request.warnings)
    ? request.warnings.filter((w) => typeof w === "string").slice(0, 5) : [];
  const list = $("request-warnings");
  list.replaceChildren(...warnings.map((w) => {
    const item = document.createElement("li");
    item.textContent = w.slice(0, 160);
    return item;
  }));
  list.hidden = warnings.length === 0;
  $("request-time").textContent = PP.localDate(request.created).toLocaleTimeString();
  // Verified push: the login screen shows a number to type here (number_match),
  // or the app shows a code to type there after approval (code_to_login).
  const matching = request.verification === "number_match";
  $("number-box").hidden = !matching;
  if (state.numberFor !== request.txid) {
    $("request-number").value = "";
    state.numberFor = request.txid;
  }
  const hint = matching ? "Type the number shown on the sign-in screen, then approve."
    : request.verification === "code_to_login"
      ? "After you approve, this app shows a code to type at the sign-in." : "";
  // Presence: Approve asks for the face or fingerprint (passkey.js); a phone
  // without a passkey may not be able to approve at all (the policy decides).
  const presence = request.user_verification !== "required" ? ""
    : state.device.passkey ? "Approving asks for your face or fingerprint."
      : "This sign-in asks for a face or fingerprint check, which this phone is not set " +
        "up for: your approval may be refused.";
  const hints = [hint, presence].filter(Boolean).join(" ");
  $("request-hint").textContent = hints;
  $("request-hint").hidden = !hints;
  const count = state.requests.size;
  const position = [...state.requests.values()].sort((a, b) => a.created - b.created)
    .findIndex((r) => r.txid === request.txid) + 1;
  $("request-position").textContent = count > 1 ? `Request ${position} of ${count}` : "";
  tick();
}

function tick() {
  const request = state.requests.get(state.current);
  if (!request) return;
  const left = request.expires - PP.serverNow();
  if (left <= 0) {
    state.done.add(request.txid);
    state.requests.delete(request.txid);
    closeNotifications(request.txid);
    announce("The request expired.");
    render();
    return;
  }
  const seconds = Math.ceil(left);
  const minutes = Math.floor(seconds / 60);
  $("request-countdown").textContent =
    `Expires in ${minutes}:${String(seconds % 60).padStart(2, "0")}`;
  const total = Math.max(1, request.expires - request.created);
  $("request-progress").value = Math.round((1000 * left) / total);
}

function startTicker() {
  if (!state.ticker) state.ticker = setInterval(tick, 1000);
}

function stopTicker() {
  clearInterval(state.ticker);
  state.ticker = null;
}

function showDenyChoices(open, focus = true) {
  $("answer-buttons").hidden = open;
  $("deny-choices").hidden = !open;
  if (focus) $(open ? "deny-only" : "approve").focus();
}

function setAnswering(busy) {
  state.answering = busy;
  const controls = ["approve", "deny", "deny-only", "report-fraud", "deny-back", "request-number"];
  for (const id of controls) {
    $(id).disabled = busy;
  }
}

const RESULTS = {
  approve: { title: "Approved", detail: "You can go back to your sign-in." },
  deny: { title: "Denied", detail: "The sign-in was refused." },
  fraud: {
    title: "Reported",
    detail: "The sign-in was refused and your administrator was alerted. " +
      "Consider changing your password.",
  },
  matched: {
    title: "Sent",
    detail: "If the number matched the one on the sign-in screen, the sign-in goes ahead.",
  },
  presence: {
    title: "Not approved",
    detail: "This sign-in needs your face or fingerprint on this phone, and that check did " +
      "not succeed. Sign in again to get a new request.",
  },
  404: { title: "No longer open", detail: "This request is gone." },
  409: { title: "Already answered", detail: "This request was answered on another device." },
  410: { title: "Expired", detail: "This request expired before your answer arrived." },
};

async function answer(decision) {
  const request = state.requests.get(state.current);
  if (!request || state.answering) return;
  let number = null;
  if (decision === "approve" && request.verification === "number_match") {
    number = $("request-number").value.trim();
    if (!/^[0-9]{1,4}$/.test(number)) {
      $("request-status").textContent = "Type the number shown on the sign-in screen first.";
      $("request-number").focus();
      return;
    }
  }
  setAnswering(true);
  $("request-status").textContent = "Sending…";
  try {
    const signature = await PP.sign(state.device.privateKey, PP.answerText(
      request.txid, request.nonce, decision, request.username, state.device.deviceId, number));
    const body = { txid: request.txid, decision, signature };
    if (number !== null) body.number = number;
    if (decision === "approve" && request.user_verification === "required" &&
        state.device.passkey) {
      // Face or fingerprint first; without it the server refuses the Approve.
      const assertion = await PK.assert(API_BASE, state.device, request);
      if (assertion) body.webauthn = assertion;
    }
    const reply = await PP.call(API_BASE, "POST", "v1/device/answer",
      { body, device: state.device });
    if (reply && typeof reply.code === "string") {
      finish(request, {
        title: "Approved", detail: "Now type this code at the sign-in:", code: reply.code,
        keep: true,
      });
    } else {
      // A wrong number is recorded as a denial; the answer does not say which.
      finish(request, number !== null ? RESULTS.matched : RESULTS[decision]);
    }
  } catch (err) {
    if (err instanceof PP.ApiError && err.code === "presence_not_verified") {
      finish(request, RESULTS.presence);
    } else if (err instanceof PP.ApiError && RESULTS[err.status]) {
      finish(request, RESULTS[err.status]);
    } else {
      $("request-status").textContent =
        `Your answer was not sent. ${describeError(err)} Try again.`;
    }
  } finally {
    setAnswering(false);
  }
}

function finish(request, result) {
  state.done.add(request.txid);
  state.requests.delete(request.txid);
  closeNotifications(request.txid);
  state.result = result;
  clearTimeout(state.resultTimer);
  if (!result.keep) state.resultTimer = setTimeout(dismissResult, RESULT_MS);
  render();
  kickPoll();
}

function dismissResult(rerender = true) {
  clearTimeout(state.resultTimer);
  state.result = null;
  if (rerender) render();
}

// -- offline code --
// The current TOTP code, computed on the phone from the key stored at
// enrollment: what the user types after the password ("password,123456")
// when no push arrives. It needs no connection.

function showCode(open) {
  state.codeView = open;
  render();
  if (!open && state.screen === "idle") $("show-code").focus();
}

/** The code screen as it opens: no stale code, the key or the reason there is none. */
function fillCode() {
  const key = state.device.totpKey;
  $("code-box").hidden = !key;
  $("code-missing").hidden = Boolean(key);
  $("code-value").textContent = "";
  $("code-countdown").textContent = "";
  state.codeStep = null;
  if (key) updateCode();
}

/** Show the code of this step and the seconds left; run again at the next whole second. */
async function updateCode() {
  clearTimeout(state.codeTimer);
  state.codeTimer = null;
  const key = state.device && state.device.totpKey;
  if (state.screen !== "code" || !key) return;
  // The server's clock as last seen (the phone's own while offline since the app started).
  const now = PP.serverNow();
  const left = PP.totpSecondsLeft(now);
  $("code-countdown").textContent = `New code in ${left} s`;
  $("code-progress").value = left;
  state.codeTimer = setTimeout(updateCode, 1000 - ((now * 1000) % 1000) + 20);
  const step = PP.totpStep(now);
  if (step === state.codeStep) return;
  state.codeStep = step;
  try {
    const code = await PP.hotp(key, step);
    // Still the code wanted? (The screen may have closed, or the step passed.)
    if (state.codeStep === step && state.screen === "code") $("code-value").textContent = code;
  } catch (err) {
    state.codeStep = null; // tried again at the next second
    $("code-value").textContent = "—";
  }
}

function stopCodeTimer() {
  clearTimeout(state.codeTimer);
  state.codeTimer = null;
  state.codeStep = null;
}

// -- long-poll --

function setConnection(text) {
  $("connection").textContent = text;
}

function kickPoll() {
  state.quickPoll = true;
  const controller = state.pollController;
  if (controller) {
    controller.kicked = true;
    controller.abort();
  }
}

function startPolling() {
  if (state.polling) return;
  state.polling = true;
  pollLoop().finally(() => { state.polling = false; });
}

async function pollLoop() {
  let failures = 0;
  while (state.device && !state.revoked) {
    const controller = new AbortController();
    state.pollController = controller;
    const timer = setTimeout(() => controller.abort(), POLL_TIMEOUT_MS);
    try {
      // While a request is on screen, ask without waiting: the server holds a
      // long-poll while the user has nothing open, so a request answered on another
      // device would otherwise stay on this screen for up to POLL_WAIT seconds.
      const wait = state.quickPoll || state.requests.size ? 0 : POLL_WAIT;
      state.quickPoll = false;
      const pending = await PP.call(API_BASE, "GET", `v1/device/pending?wait=${wait}`,
        { device: state.device, signal: controller.signal });
      PP.learnServerTime(pending.server_time);
      failures = 0;
      setConnection("Connected. Waiting for requests.");
      setRequests(Array.isArray(pending.requests) ? pending.requests : []);
      if (state.requests.size) await sleep(OPEN_POLL_MS, controller.signal);
    } catch (err) {
      if (err.name === "AbortError" && controller.kicked) continue;
      if (err instanceof PP.ApiError && err.status === 401) {
        if (/revoked|unknown/.test(err.message)) {
          deviceRemoved();
          return;
        }
        // A clock too far off or a replayed nonce: learn the server's time again.
        await PP.call(API_BASE, "GET", "v1/info").then(
          (info) => PP.learnServerTime(info.server_time), () => {});
      }
      failures += 1;
      setConnection("Can't reach the server. Trying again…");
      const backoff = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(failures - 1, 5));
      await sleep(backoff, controller.signal).catch(() => {});
    } finally {
      clearTimeout(timer);
      if (state.pollController === controller) state.pollController = null;
    }
  }
}

function deviceRemoved() {
  state.revoked = true;
  state.codeView = false; // the server refuses the codes of a removed device too
  stopTicker();
  stopCodeTimer();
  $("not-enrolled-reason").textContent = "This phone's setup was removed by an administrator. " +
    "Open a new setup link on this phone, or paste it here.";
  show("not-enrolled");
}

start();
