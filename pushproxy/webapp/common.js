// pushproxy web authenticator: what the page (app.js) and the service worker
// (sw.js) share. Encodings, the device record in IndexedDB, and the signed
// requests of docs/approval-protocol.md. A classic script (not a module) so the
// service worker can load it with importScripts() in every browser.
"use strict";

const PP = (() => {
  const encoder = new TextEncoder();

  // -- encodings --

  /** base64url without padding of a Uint8Array or ArrayBuffer. */
  function b64uEncode(data) {
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    let text = "";
    for (const byte of bytes) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  /** The octets of a base64url text (padding optional). */
  function b64uDecode(text) {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "===".slice((base64.length + 3) % 4);
    return Uint8Array.from(atob(padded), (ch) => ch.charCodeAt(0));
  }

  function randomB64u(octets) {
    return b64uEncode(crypto.getRandomValues(new Uint8Array(octets)));
  }

  async function sha256B64u(bytes) {
    return b64uEncode(await crypto.subtle.digest("SHA-256", bytes));
  }

  const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

  /**
   * The octets of a base32 text (RFC 4648 section 6), as TOTP secrets are
   * written: any case, spaces and trailing padding allowed. Throws on anything
   * else, so a mangled secret is never taken for a different one.
   */
  function base32Decode(text) {
    const clean = String(text).replace(/\s+/g, "").toUpperCase().replace(/=+$/, "");
    // 8 characters carry 5 octets; a last group of 1, 3 or 6 characters is no encoding.
    if (!clean || [1, 3, 6].includes(clean.length % 8)) throw new Error("not base32");
    const out = new Uint8Array(Math.floor((clean.length * 5) / 8));
    let buffer = 0; // the pending bits (at most 12)
    let bits = 0;
    let index = 0;
    for (const ch of clean) {
      const value = BASE32.indexOf(ch);
      if (value < 0) throw new Error("not base32");
      buffer = ((buffer << 5) | value) & 0xfff;
      bits += 5;
      if (bits >= 8) {
        bits -= 8;
        out[index++] = (buffer >> bits) & 0xff;
      }
    }
    return out;
  }

  // -- the signed texts (pushproxy/approval/crypto.py has the server's side) --

  const ECDSA = { name: "ECDSA", namedCurve: "P-256" };
  const SIGN = { name: "ECDSA", hash: "SHA-256" };

  /**
   * A new device key pair. The private key is created non-extractable: no
   * script, not even this app, can read it out of the browser. The public key
   * of such a pair stays exportable.
   */
  function generateKeyPair() {
    return crypto.subtle.generateKey(ECDSA, false, ["sign", "verify"]);
  }

  /** The b64u uncompressed point of a public CryptoKey (65 octets, 0x04 || X || Y). */
  async function exportPublicKey(publicKey) {
    return b64uEncode(await crypto.subtle.exportKey("raw", publicKey));
  }

  /** b64u of the raw r || s signature of text (UTF-8), WebCrypto's own format. */
  async function sign(privateKey, text) {
    return b64uEncode(await crypto.subtle.sign(SIGN, privateKey, encoder.encode(text)));
  }

  function enrollText(token, publicKey, name) {
    return `pushproxy-enroll-v1\n${token}\n${publicKey}\n${name}`;
  }

  /** The answer's signed text; a number-matching approval also signs the typed number. */
  function answerText(txid, nonce, decision, username, deviceId, number = null) {
    const text = `pushproxy-answer-v1\n${txid}\n${nonce}\n${decision}\n${username}\n${deviceId}`;
    return number === null ? text : `${text}\n${number}`;
  }

  // -- offline codes: TOTP (RFC 6238) over HOTP (RFC 4226) --
  // The server (pushproxy/passcodes.py) checks them: HMAC-SHA-1, 30-second
  // steps since the epoch, 6 digits.

  const TOTP_PERIOD = 30;
  const TOTP_DIGITS = 6;
  const HMAC_SHA1 = { name: "HMAC", hash: "SHA-1" };

  /**
   * The base32 TOTP secret of the enroll answer as an HMAC-SHA-1 CryptoKey that
   * is not extractable: the app computes codes with it, but no script (not
   * even this app) can read the secret out of it again. The decoded octets are
   * wiped once imported.
   */
  async function importTotpSecret(secretB32) {
    const octets = base32Decode(secretB32);
    try {
      return await crypto.subtle.importKey("raw", octets, HMAC_SHA1, false, ["sign"]);
    } finally {
      octets.fill(0);
    }
  }

  /** The TOTP step of a time in seconds (what the code is the HOTP of). */
  function totpStep(seconds) {
    return Math.floor(seconds / TOTP_PERIOD);
  }

  /** Whole seconds (1-30) until the code of a time in seconds changes. */
  function totpSecondsLeft(seconds) {
    return TOTP_PERIOD - Math.floor(seconds - totpStep(seconds) * TOTP_PERIOD);
  }

  /** The 6-digit HOTP code of counter (a TOTP step) under an HMAC-SHA-1 key. */
  async function hotp(key, counter) {
    const message = new DataView(new ArrayBuffer(8)); // the counter, 64-bit big-endian
    message.setBigUint64(0, BigInt(counter));
    const mac = new DataView(await crypto.subtle.sign("HMAC", key, message.buffer));
    // RFC 4226 section 5.3, dynamic truncation: the low 4 bits of the last octet
    // pick 4 octets, read as a 31-bit number.
    const offset = mac.getUint8(mac.byteLength - 1) & 0x0f;
    const value = mac.getUint32(offset) & 0x7fffffff;
    return String(value % 10 ** TOTP_DIGITS).padStart(TOTP_DIGITS, "0");
  }

  // -- the device record in IndexedDB --
  // One record: {deviceId, username, name, publicKey, privateKey (a CryptoKey),
  // totpKey (an HMAC CryptoKey of the TOTP secret; null or absent for a device
  // enrolled without one), pushEndpoint, enrolled}. IndexedDB keeps CryptoKey
  // objects as they are, so a non-extractable key stays non-extractable when
  // stored.

  const DB_NAME = "pushproxy";
  const STORE = "device";
  const RECORD = "current";

  function openDb() {
    return new Promise((resolve, reject) => {
      const open = indexedDB.open(DB_NAME, 1);
      open.onupgradeneeded = () => open.result.createObjectStore(STORE);
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
      open.onblocked = () => reject(new Error("the app's storage is blocked by another tab"));
    });
  }

  async function withStore(mode, action) {
    const db = await openDb();
    try {
      return await new Promise((resolve, reject) => {
        const tx = db.transaction(STORE, mode);
        const request = action(tx.objectStore(STORE));
        tx.oncomplete = () => resolve(request.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error || new Error("storage transaction aborted"));
      });
    } finally {
      db.close();
    }
  }

  /** The enrolled device, or undefined. */
  function loadDevice() {
    return withStore("readonly", (store) => store.get(RECORD));
  }

  function saveDevice(device) {
    return withStore("readwrite", (store) => store.put(device, RECORD));
  }

  function deleteDevice() {
    return withStore("readwrite", (store) => store.delete(RECORD));
  }

  // -- the server's clock --
  // Signed requests carry a timestamp the server accepts within 60 s of its own
  // clock; a phone's clock can be off by more, so requests use the server's time
  // as last seen (GET /v1/info, every pending answer).

  let clockOffset = 0;

  function learnServerTime(serverTime) {
    if (typeof serverTime === "number" && Number.isFinite(serverTime)) {
      clockOffset = serverTime - Date.now() / 1000;
    }
  }

  /** Now, in seconds on the server's clock. */
  function serverNow() {
    return Date.now() / 1000 + clockOffset;
  }

  /** A time on the server's clock (seconds) as a local Date. */
  function localDate(serverSeconds) {
    return new Date((serverSeconds - clockOffset) * 1000);
  }

  // -- HTTP --

  /** A refused API call: HTTP status, the protocol's error code and message. */
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message || code || `HTTP ${status}`);
      this.name = "ApiError";
      this.status = status;
      this.code = code;
    }
  }

  /**
   * Call the API at apiBase (the public URL, ending in "/"): method, a path
   * relative to it ("v1/device/pending?wait=25"), an optional JSON body, and the
   * device record when the request must be signed. Resolves to the JSON answer;
   * rejects with ApiError for an error answer, TypeError for no network, and
   * AbortError when signal aborts.
   */
  async function call(apiBase, method, path, { body, device, signal } = {}) {
    const url = new URL(path, apiBase);
    const bytes = encoder.encode(body === undefined ? "" : JSON.stringify(body));
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (device) {
      const timestamp = String(Math.floor(serverNow()));
      const nonce = randomB64u(16);
      // The path and query exactly as the request line will carry them.
      const target = url.pathname + url.search;
      const text = `pushproxy-request-v1\n${method}\n${target}\n${timestamp}\n${nonce}\n` +
        (await sha256B64u(bytes));
      headers["X-Device-Id"] = device.deviceId;
      headers["X-Timestamp"] = timestamp;
      headers["X-Nonce"] = nonce;
      headers["X-Signature"] = await sign(device.privateKey, text);
    }
    const response = await fetch(url, {
      method, headers, signal, body: body === undefined ? undefined : bytes,
      cache: "no-store", credentials: "omit", redirect: "error",
    });
    let answer = null;
    try {
      answer = await response.json();
    } catch (err) {
      if (err.name === "AbortError") throw err;
      answer = null; // not JSON (a proxy's error page): the status says enough
    }
    if (!response.ok) {
      const code = answer && typeof answer.error === "string" ? answer.error : "http_error";
      const message = answer && typeof answer.message === "string" ? answer.message : "";
      throw new ApiError(response.status, code, message);
    }
    return answer;
  }

  /** PUT the device's Web Push subscription (a PushSubscription or null). */
  function putSubscription(apiBase, device, subscription) {
    return call(apiBase, "PUT", "v1/device/subscription",
      { body: { push_subscription: subscriptionJson(subscription) }, device });
  }

  /** Just what the server keeps of a PushSubscription: endpoint and keys. */
  function subscriptionJson(subscription) {
    if (!subscription) return null;
    const json = subscription.toJSON();
    return { endpoint: json.endpoint, keys: { p256dh: json.keys.p256dh, auth: json.keys.auth } };
  }

  /** Whether a value looks like one entry of the pending list (or a push payload). */
  function isRequest(value) {
    return Boolean(value) && typeof value === "object" &&
      typeof value.txid === "string" && typeof value.nonce === "string" &&
      typeof value.username === "string" &&
      typeof value.created === "number" && typeof value.expires === "number";
  }

  return {
    b64uEncode, b64uDecode, base32Decode, generateKeyPair, exportPublicKey, sign, enrollText,
    answerText, TOTP_PERIOD, importTotpSecret, totpStep, totpSecondsLeft, hotp, loadDevice,
    saveDevice, deleteDevice, learnServerTime, serverNow, localDate, ApiError, call,
    putSubscription, subscriptionJson, isRequest,
  };
})();
