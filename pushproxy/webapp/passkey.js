// pushproxy web authenticator: presence with a platform passkey (docs/presence.md).
// At enrollment (and later from the main screen) the app creates a passkey bound
// to this device; a request that needs presence is approved with an assertion of
// it, made for the challenge the server derived from the request, the decision
// and the device. The server checks everything (py_webauthn); this file only
// turns the server's JSON options into WebAuthn calls and the answers into JSON.
"use strict";

const PK = (() => {
  const enc = PP.b64uEncode;
  const dec = PP.b64uDecode;

  /** Whether this browser has a platform authenticator with user verification. */
  async function available() {
    if (!window.PublicKeyCredential || !navigator.credentials) return false;
    try {
      return await PublicKeyCredential.isUserVerifyingPlatformAuthenticatorAvailable();
    } catch (err) {
      return false;
    }
  }

  function creationOptions(o) {
    return {
      ...o,
      challenge: dec(o.challenge),
      user: { ...o.user, id: dec(o.user.id) },
      excludeCredentials: (o.excludeCredentials || []).map((c) => ({ ...c, id: dec(c.id) })),
    };
  }

  function requestOptions(o) {
    return {
      ...o,
      challenge: dec(o.challenge),
      allowCredentials: (o.allowCredentials || []).map((c) => ({ ...c, id: dec(c.id) })),
    };
  }

  /** A PublicKeyCredential as the JSON the server reads (its own toJSON where present). */
  function credentialJson(credential) {
    const r = credential.response;
    const response = { clientDataJSON: enc(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = enc(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = enc(r.authenticatorData);
      response.signature = enc(r.signature);
      response.userHandle = r.userHandle ? enc(r.userHandle) : null;
    }
    return {
      id: credential.id, rawId: enc(credential.rawId), type: credential.type, response,
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || null,
    };
  }

  /** Create this device's passkey (the browser asks for a face or fingerprint). */
  async function register(apiBase, device) {
    const options = await PP.call(apiBase, "POST", "v1/device/passkey-options",
      { body: {}, device });
    const credential = await navigator.credentials.create(
      { publicKey: creationOptions(options.publicKey) });
    await PP.call(apiBase, "POST", "v1/device/passkey",
      { body: { credential: credentialJson(credential) }, device });
    return true;
  }

  /**
   * The assertion for approving request (JSON for the answer's "webauthn"), or
   * null when the user or the authenticator did not verify: the Approve then
   * goes without it and the server records the refusal. request null: for
   * "add a device".
   */
  async function assert(apiBase, device, request) {
    const body = request ? { txid: request.txid, decision: "approve" }
      : { decision: "add_device" };
    const options = await PP.call(apiBase, "POST", "v1/device/presence", { body, device });
    try {
      const credential = await navigator.credentials.get(
        { publicKey: requestOptions(options.publicKey) });
      return credential ? credentialJson(credential) : null;
    } catch (err) {
      if (err.name === "NotAllowedError" || err.name === "SecurityError") return null;
      throw err;
    }
  }

  return { available, register, assert, credentialJson };
})();
