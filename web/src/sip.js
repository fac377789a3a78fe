// Joining over SIP over WebSocket (RFC 7118) with SIP.js (docs/protocol.md §10.1).
//
// Why SIP.js, and its core API: the focus answers the INVITE with a 200 OK whose body is the
// join JSON (application/vnd.webconf.join+json), not SDP. JsSIP feeds any 2xx body to a
// WebRTC RTCPeerConnection as SDP and tears the call down when that fails; SIP.js's Inviter
// hands only `Content-Disposition: session` bodies to its session-description handler (the
// join body is "render"), and would BYE a 2xx without one. SIP.js's core (UserAgentCore:
// transport, transactions, dialogs and the Digest retry of a 401) lets us send the INVITE
// ourselves and read the 200 OK as it is, then ACK it and later BYE the dialog. SIP.js only
// does MD5, which the focus offers alone to the User-Agent "webconf-web" (§2.4).
import { UserAgent } from "sip.js";

export const JOIN_CONTENT_TYPE = "application/vnd.webconf.join+json";
export const USER_AGENT = "webconf-web/0.1 (SIP.js 0.21)";

export class JoinError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "JoinError";
    this.status = status;
  }
}

const MESSAGES = {
  401: "Wrong SIP address or password.",
  403: "You may not join this meeting (wrong password, or another organization).",
  404: "There is no such meeting. Check the conference URI.",
  429: "Too many failed attempts: wait a minute and try again.",
  480: "The meeting is not available right now.",
  503: "The meeting service is unavailable right now; try again shortly.",
};

export function joinErrorMessage(status, reason) {
  return MESSAGES[status] || `Joining failed: ${status} ${reason || ""}`.trim();
}

/** "alice@contoso.example" -> ["alice", "contoso.example"]; throws JoinError when malformed. */
export function splitAddress(address) {
  const text = address.trim().replace(/^sips?:/i, "");
  const at = text.lastIndexOf("@");
  if (at <= 0 || at === text.length - 1 || /[\s<>;]/.test(text)) {
    throw new JoinError("Enter your SIP address as user@domain.");
  }
  return [text.slice(0, at), text.slice(at + 1).toLowerCase()];
}

/**
 * Join the conference: resolves to { admission, leave(), userAgent } once the 200 OK came and
 * was ACKed. `onEnded(reason)` is called when the focus ends the dialog (BYE) or the
 * WebSocket drops.
 */
export async function join({ wssUrl, address, password, conferenceUri, onEnded = () => {} }) {
  const [user, domain] = splitAddress(address);
  const target = UserAgent.makeURI(conferenceUri.trim());
  if (!target || !target.user) throw new JoinError("The conference URI is not a SIP URI.");
  const userAgent = new UserAgent({
    uri: UserAgent.makeURI(`sip:${user}@${domain}`),
    authorizationUsername: user,
    authorizationPassword: password,
    userAgentString: USER_AGENT,
    transportOptions: { server: wssUrl, connectionTimeout: 10, traceSip: false },
    logLevel: "error",
    logBuiltinEnabled: false,
    hackIpInContact: false,
  });
  let ended = false;
  const end = (reason) => {
    if (!ended) {
      ended = true;
      onEnded(reason);
    }
  };
  userAgent.delegate = { onDisconnect: (error) => { if (error) end("connection lost"); } };
  try {
    await userAgent.start();
  } catch {
    throw new JoinError("Cannot reach the meeting service (SIP over WebSocket).");
  }
  const core = userAgent.userAgentCore;
  const message = core.makeOutgoingRequestMessage(
    "INVITE", target, userAgent.configuration.uri, target, {},
    [`Contact: ${userAgent.contact.toString()}`, `Accept: ${JOIN_CONTENT_TYPE}`,
     "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS"]);
  const accepted = await new Promise((resolve, reject) => {
    core.invite(message, {
      onAccept: (response) => resolve(response),
      onReject: (response) => {
        const m = response.message;
        reject(new JoinError(joinErrorMessage(m.statusCode, m.reasonPhrase), m.statusCode));
      },
      onTransportError: () => reject(new JoinError("The connection to the meeting service failed.")),
    });
  }).catch(async (error) => {
    await userAgent.stop().catch(() => {});
    throw error;
  });
  const response = accepted.message;
  accepted.ack();
  const session = accepted.session;
  const contentType = (response.getHeader("Content-Type") || "").split(";")[0].trim().toLowerCase();
  let admission;
  try {
    if (contentType !== JOIN_CONTENT_TYPE) throw new Error(contentType);
    admission = JSON.parse(response.body);
  } catch {
    session.bye();
    await userAgent.stop().catch(() => {});
    throw new JoinError("The meeting service answered without a join body.");
  }
  session.delegate = {
    onBye: (bye) => {
      bye.accept();
      end("ended by the meeting");
    },
  };
  async function leave() {
    if (!ended) {
      ended = true;
      await new Promise((resolve) => {
        try {
          session.bye({ onAccept: resolve, onReject: resolve, onTransportError: resolve });
        } catch {
          resolve();
        }
        setTimeout(resolve, 5000);
      });
    }
    await userAgent.stop().catch(() => {});
  }
  return { admission, leave, userAgent, tenant: domain };
}
