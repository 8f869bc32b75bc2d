// A marketbus consumer in Node.js with the `nats` npm client: a JetStream durable on stream MD.
//
//   cd examples/node && npm ci
//   node consumer.js 'md.trade.>'        # while `make run` runs: its URL and identity from .marketbus
//   NATS_URL=nats://bus:4222 NATS_NKEY_SEED_FILE=consumer.nk node consumer.js 'md.trade.>'
//
// Prints one JSON object per event (batch envelopes unpacked), with the subject it came on.
// The durable (MARKETBUS_DURABLE, default "node_consumer") survives restarts: a restarted consumer
// resumes after the last acknowledged message. Every process started with the same durable shares
// the work. REPLAY_FROM=<ISO time> makes a *new* durable start at that time; otherwise it starts
// with new messages. MAX_EVENTS=<n> exits after n events (tests, scripts).
// Settings: NATS_URL (comma-separated for a cluster); NATS_NKEY_SEED_FILE (an nkey seed, e.g. the
// `consumer.nk` or `reader.nk` that `make run` writes to .marketbus/credentials: auth is on), or
// NATS_USER/NATS_PASSWORD, or NATS_TOKEN. Without NATS_URL, what `make run` wrote to its data dir
// (MARKETBUS_DATA_DIR, else .marketbus here or in the repository root): the URL in nats.url and,
// without credentials, the `consumer` identity's seed; else nats://127.0.0.1:4222. With a seed, replies come on _INBOX.<identity> (the
// seed file's name), the only inbox the identity may read; NATS_INBOX_PREFIX overrides it.
"use strict";

const fs = require("fs");
const path = require("path");
const { connect, nkeyAuthenticator, AckPolicy, DeliverPolicy } = require("nats");

const STREAM = "MD"; // every md.> subject lives in stream MD (marketbus provisions it)

// Timestamps are integer nanoseconds (~1.7e18): beyond Number.MAX_SAFE_INTEGER, JSON.parse would
// round them. Integers of 16+ digits are quoted before parsing and become BigInt.
const BIG_INT = /([:,[]\s*)(-?\d{16,})(?=\s*[,}\]])/g;

function parse(data) {
  const text = Buffer.from(data).toString("utf8").replace(BIG_INT, '$1"$2"');
  return JSON.parse(text, (key, value) => (typeof value === "string" && /^-?\d{16,}$/.test(value) ? BigInt(value) : value));
}

function eventsOf(message) {
  return message.type === "batch" ? message.events : [message];
}

function toLine(subject, event) {
  return JSON.stringify({ subject, ...event }, (key, value) => (typeof value === "bigint" ? value.toString() : value));
}

async function ensureDurable(jsm, durable, filter, replayFrom) {
  try {
    return await jsm.consumers.info(STREAM, durable);
  } catch (err) {
    if (!String(err.message).includes("consumer not found")) throw err;
  }
  const config = { durable_name: durable, filter_subject: filter, ack_policy: AckPolicy.Explicit, ack_wait: 30e9 };
  if (replayFrom) {
    config.deliver_policy = DeliverPolicy.StartTime;
    config.opt_start_time = new Date(replayFrom).toISOString();
  } else {
    config.deliver_policy = DeliverPolicy.New;
  }
  return jsm.consumers.add(STREAM, config);
}

// The data dir of `make run` (its nats.url and credentials/), when there is one.
function dataDir(env) {
  const candidates = env.MARKETBUS_DATA_DIR
    ? [env.MARKETBUS_DATA_DIR]
    : [".marketbus", path.join(__dirname, "..", "..", ".marketbus")];
  return candidates.find((dir) => fs.existsSync(path.join(dir, "nats.url")));
}

// Without NATS_URL: the server `make run` recorded (4222 may be taken) and, unless credentials are
// given, its `consumer` identity. A NATS_URL of your own is used as it is.
function withDataDir(env) {
  const dir = env.NATS_URL ? undefined : dataDir(env);
  if (!dir) return env;
  const filled = { ...env, NATS_URL: fs.readFileSync(path.join(dir, "nats.url"), "utf8").trim() };
  const seed = path.join(dir, "credentials", "consumer.nk");
  if (!env.NATS_NKEY_SEED_FILE && !env.NATS_USER && !env.NATS_TOKEN && fs.existsSync(seed)) {
    filled.NATS_NKEY_SEED_FILE = seed;
  }
  return filled;
}

// Connection options for the credentials in the environment (marketbus identities are nkey users).
function auth(env) {
  const options = {};
  if (env.NATS_NKEY_SEED_FILE) {
    const seed = fs.readFileSync(env.NATS_NKEY_SEED_FILE, "utf8").trim();
    options.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
    options.inboxPrefix = `_INBOX.${path.basename(env.NATS_NKEY_SEED_FILE).replace(/\.nk$/, "")}`;
  } else if (env.NATS_USER) {
    Object.assign(options, { user: env.NATS_USER, pass: env.NATS_PASSWORD });
  } else if (env.NATS_TOKEN) {
    options.token = env.NATS_TOKEN;
  }
  if (env.NATS_INBOX_PREFIX) options.inboxPrefix = env.NATS_INBOX_PREFIX;
  return options;
}

async function main() {
  const filter = process.argv[2] || "md.>";
  if (!filter.startsWith("md.")) throw new Error(`${filter}: this example reads stream MD (subjects md.>)`);
  const durable = process.env.MARKETBUS_DURABLE || "node_consumer";
  const maxEvents = Number(process.env.MAX_EVENTS || 0);
  const env = withDataDir(process.env);
  const nc = await connect({
    servers: (env.NATS_URL || "nats://127.0.0.1:4222").split(","),
    name: `marketbus-node-${durable}`,
    ...auth(env),
  });
  await ensureDurable(await nc.jetstreamManager(), durable, filter, process.env.REPLAY_FROM);
  const consumer = await nc.jetstream().consumers.get(STREAM, durable);
  process.stderr.write(`consuming ${filter} from stream ${STREAM} as durable ${durable}\n`);
  const messages = await consumer.consume({ max_messages: 256 });
  const stop = () => messages.stop();
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  let seen = 0;
  for await (const m of messages) {
    let events;
    try {
      events = eventsOf(parse(m.data));
    } catch (err) {
      // not a marketbus event: say so and terminate it (a redelivery would fail the same way)
      process.stderr.write(`undecodable message on ${m.subject}: ${err.message}\n`);
      m.term();
      continue;
    }
    for (const event of events) process.stdout.write(toLine(m.subject, event) + "\n");
    m.ack(); // after the work: a crash before this line means JetStream delivers the message again
    seen += events.length;
    if (maxEvents && seen >= maxEvents) break;
  }
  await nc.drain();
}

main().catch((err) => {
  process.stderr.write(`error: ${err.message}\n`);
  process.exit(2);
});
