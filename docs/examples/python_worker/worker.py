"""A sample worker in Python: every operation of the bridge's catalogue, with nats-py.

It speaks the protocol of docs/worker-guide.md, like the mock worker (worker/src/runner.rs,
worker/src/handler.rs) does:

- each durable operation (23) is pulled from a durable consumer `py_<family>_<action>` on its
  family's stream (explicit ack, ack_wait 30 s, max_deliver 5); results are stored by
  idempotency key in the key-value bucket `py_results` with the request's fingerprint (a
  stored result is sent again, a reused key refused); otherwise the processor is called with
  the key (a 4xx is a `failure` reply; no answer or a 5xx is a nak, retried later); the result
  is stored, the reply published to `X-Reply-To` and flushed, and only then the message acked;
- an authorization passes `router_data.capture_method` on to the processor, so an automatic
  one is charged in one call; the processor's effect (with its `captured_amount`) is the
  reply's `connector_response`;
- each query (12) is served by a queue subscription and answered on the request's reply subject;
- `hyperswitch.replies.lookup` is answered from the result store (`X-Lookup: hit` / `miss`);
- poison messages are copied to `hyperswitch.dlq.<family>.<action>` and terminated, and so are
  messages that reached max_deliver (from JetStream's advisory).

Run it against a NATS server whose streams the bridge created, and the mock processor: the
addresses `cargo run -p harness -- up --workers 0` prints (free ports, new on every start):

    NATS_URL=nats://127.0.0.1:<nats port> PROCESSOR_URL=http://127.0.0.1:<processor port> \\
        .venv/bin/python docs/examples/python_worker/worker.py

WORKER_NAME (optional) names the instance in the log. Run several copies: consumers and queue
groups share the work. It stops on SIGTERM or SIGINT. Check it with
`harness conform --worker-cmd ".venv/bin/python docs/examples/python_worker/worker.py"`.

`--ack-first` is a defect switch, for checking that a conformance kit notices it: every
durable message is acked as soon as it arrives, before the processor call and the reply, so a
crash loses the operation. Never use it otherwise.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request

import nats
from nats.errors import TimeoutError as NoMessages
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

PREFIX = "hyperswitch"
STREAM_PREFIX = "HYPERSWITCH"
CONSUMER_PREFIX = "py"
QUEUE_GROUP = "py_workers"
BUCKET = "py_results"
ACK_WAIT_S = 30
MAX_DELIVER = 5
NAK_DELAY_S = 0.5

DURABLE = [
    "payments.authorize", "payments.capture", "payments.void", "payments.complete_authorize",
    "payments.approve", "payments.reject", "payments.incremental_auth", "payments.update_metadata",
    "refunds.execute", "refunds.update", "mandates.setup", "mandates.revoke", "mandates.update",
    "tokens.create", "tokens.delete", "disputes.accept", "disputes.defend", "disputes.evidence",
    "webhooks.incoming", "payouts.create", "payouts.fulfill", "payouts.cancel", "fraud.check",
]
QUERIES = [
    "payments.sync", "payments.session", "payments.post_session_tokens", "refunds.sync",
    "tokens.validate", "auth.external", "auth.access_token", "auth.auth_token", "webhooks.verify",
    "payouts.sync", "tax.calculate", "giftcard.balance",
]
REQUIRED = ["operation", "merchant_id", "payment_id", "attempt_id", "correlation_id", "idempotency_key"]
WORKER_NAME = os.environ.get("WORKER_NAME", "py-worker")


def log(*parts):
    """One line to stderr. Never pass router_data here: it may hold card data."""
    print(WORKER_NAME, *parts, file=sys.stderr, flush=True)


# ---- envelopes -------------------------------------------------------------------------

class Poison(Exception):
    """A message that can never be processed: it goes to the dead letters."""


def decode(payload, operation=None):
    """The request envelope, or Poison. Unknown fields are ignored."""
    try:
        env = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise Poison(f"undecodable envelope: {e}")
    if not isinstance(env, dict):
        raise Poison("undecodable envelope: not a JSON object")
    for field in REQUIRED:
        if not isinstance(env.get(field), str):
            raise Poison(f"undecodable envelope: missing or invalid field `{field}`")
    ts = env.get("timestamp")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise Poison("undecodable envelope: missing or invalid field `timestamp`")
    if operation is not None and env["operation"] != operation:
        raise Poison(f"operation {env['operation']} on the subject of {operation}")
    return env


def router_data(env):
    rd = env.get("router_data")
    return rd if isinstance(rd, dict) else {}


def amount(env):
    v = router_data(env).get("amount")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def currency(env):
    v = router_data(env).get("currency")
    return v if isinstance(v, str) else None


def capture_method(env):
    """An authorization's capture method, passed on to the processor: `automatic` is charged in
    one call (one effect that authorizes and captures). Only `automatic` and `manual` are known."""
    v = router_data(env).get("capture_method")
    return v if env["operation"] == "payments.authorize" and v in ("automatic", "manual") else None


def fingerprint(env):
    """'The same request': operation, merchant, payment, instance and router data (FNV-1a of
    their canonical JSON, as the mock worker's store does)."""
    parts = [env["operation"], env["merchant_id"], env["payment_id"], env["attempt_id"], env.get("router_data")]
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def reply(env, status, transaction_id=None, connector_response=None, error=None):
    """A ResponseEnvelope echoing the request's correlation id, merchant and payment."""
    r = {"status": status, "correlation_id": env["correlation_id"], "merchant_id": env["merchant_id"],
         "payment_id": env["payment_id"], "connector_response": connector_response}
    if transaction_id is not None:
        r["transaction_id"] = transaction_id
    if error is not None:
        r["error"] = error
    return r


def failure(env, code, message):
    return reply(env, "failure", error={"code": code, "message": message})


def reply_headers(env):
    return {"X-Correlation-Id": env["correlation_id"], "X-Idempotency-Key": env["idempotency_key"],
            "X-Operation": env["operation"],
            "X-Message-Id": f"{env['merchant_id']}:{env['payment_id']}:{env['operation']}:{env['attempt_id']}"}


# ---- the processor (blocking HTTP, run in the default executor) ------------------------

class Transient(Exception):
    """Nothing definite was learnt (unreachable, 5xx, odd answer): nak and try again later."""


class Rejected(Exception):
    """The processor refused (4xx): definitely not done."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def http(method, path, query=None, body=None, key=None):
    url = os.environ["PROCESSOR_URL"].rstrip("/") + "/" + "/".join(urllib.parse.quote(p, safe="") for p in path)
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        if e.code >= 500:
            raise Transient(f"processor answered {e.code}")
        try:
            err = json.loads(text)
            raise Rejected(e.code, str(err["code"]), str(err["message"]))
        except (ValueError, KeyError, TypeError):
            raise Transient(f"processor answered {e.code} without an error body")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise Transient(f"processor: {e}")


async def processor(*args, **kwargs):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: http(*args, **kwargs))


async def call_processor(env):
    """The effect of a durable operation, asked with the idempotency key."""
    request = {"operation": env["operation"], "merchant_id": env["merchant_id"], "payment_id": env["payment_id"],
               "reference": env["attempt_id"], "amount": amount(env), "currency": currency(env), "details": None}
    if capture_method(env) is not None:
        request["capture_method"] = capture_method(env)
    try:
        effect = await processor("POST", ["v1", "effects"], body=request, key=env["idempotency_key"])
    except Rejected as e:
        return failure(env, e.code, e.message)
    return reply(env, "success", transaction_id=effect.get("effect_id"), connector_response=effect)


async def answer_query(env):
    """A query's reply, as Handler::query does; never creates a processor effect."""
    op, rd = env["operation"], router_data(env)
    if op == "payments.sync":
        try:
            account = await processor("GET", ["v1", "accounts", env["merchant_id"], env["payment_id"]])
        except (Rejected, Transient) as e:
            if getattr(e, "status", None) == 404:
                return failure(env, "payment_not_found", "the processor has no record of this payment")
            return failure(env, "processor_unavailable", str(e))
        try:
            ledger = await processor("GET", ["v1", "ledger"], query={"merchant_id": env["merchant_id"], "payment_id": env["payment_id"]})
            account["effects"] = ledger.get("effects", [])
        except (Rejected, Transient):
            account["effects"] = []
        return reply(env, "success", connector_response=account)
    if op in ("refunds.sync", "payouts.sync"):
        field = "refund_id" if op == "refunds.sync" else "payout_id"
        reference = rd.get(field) if isinstance(rd.get(field), str) else env["attempt_id"]
        try:
            effects = await processor("GET", ["v1", "references", env["merchant_id"], reference])
        except (Rejected, Transient) as e:
            if getattr(e, "status", None) != 404:
                return failure(env, "processor_unavailable", str(e))
            effects = []
        if not effects:
            return failure(env, "not_found", f"the processor has no record of {reference}")
        return reply(env, "success", transaction_id=effects[-1].get("effect_id"),
                     connector_response={"reference": reference, "effects": effects})
    if op == "tax.calculate":
        a = amount(env) or 0
        tax = abs(a) * 8 // 100 * (1 if a >= 0 else -1)
        return reply(env, "success", connector_response={"order_tax_amount": tax, "rate_bps": 800})
    if op == "giftcard.balance":
        return reply(env, "success", connector_response={"balance": 10000, "currency": currency(env) or "USD"})
    if op == "tokens.validate":
        return reply(env, "success", connector_response={"valid": True})
    if op == "webhooks.verify":
        return reply(env, "success", connector_response={"verified": True})
    token = f"{op.replace('.', '_')}_{fingerprint(env)}"
    return reply(env, "success", connector_response={"token": token, "expires_in": 900})


# ---- the worker --------------------------------------------------------------------------

def bucket_key(idempotency_key):
    """Bucket keys allow few characters: hex keeps every idempotency key exact and valid."""
    return idempotency_key.encode().hex()


class Worker:
    def __init__(self, nc, ack_first):
        self.nc, self.js, self.ack_first = nc, nc.jetstream(), ack_first
        self.stopping = asyncio.Event()
        self.kv = None
        self.tasks = set()

    def concurrently(self, handler):
        """A subscription callback that handles each message in a task of its own."""
        def done(task):
            self.tasks.discard(task)
            if not task.cancelled() and task.exception():
                log("handler failed:", repr(task.exception()))

        async def cb(msg):
            task = asyncio.create_task(handler(msg))
            self.tasks.add(task)
            task.add_done_callback(done)
        return cb

    async def open_results(self):
        try:
            self.kv = await self.js.key_value(BUCKET)
        except BucketNotFoundError:
            self.kv = await self.js.create_key_value(bucket=BUCKET, history=1, description="results by idempotency key")

    async def stored(self, env):
        """The stored record of the key (fingerprint, reply), or None."""
        try:
            entry = await self.kv.get(bucket_key(env["idempotency_key"]))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        record = json.loads(entry.value)
        return record["fingerprint"], record["response"]

    async def durable_reply(self, env):
        """Idempotency first: a stored result, a refusal of a reused key, or the processor."""
        record = await self.stored(env)
        if record is not None:
            stored_print, response = record
            if stored_print != fingerprint(env):
                return failure(env, "IDEMPOTENCY_KEY_REUSED", "the key was used for another request"), "refused"
            response["correlation_id"] = env["correlation_id"]
            return response, "stored"
        response = await call_processor(env)
        # Store before replying: a crash after this point re-sends the same result.
        record = json.dumps({"fingerprint": fingerprint(env), "response": response}).encode()
        await self.kv.put(bucket_key(env["idempotency_key"]), record)
        return response, "processor"

    async def consumer(self, operation):
        """The operation's durable pull consumer (created if missing; the stream must exist)."""
        family, action = operation.split(".")
        name, stream = f"{CONSUMER_PREFIX}_{family}_{action}", f"{STREAM_PREFIX}_{family.upper()}"
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_deliver=MAX_DELIVER,
                                max_ack_pending=10000)
        try:
            return await self.js.pull_subscribe(f"{PREFIX}.{operation}", durable=name, stream=stream, config=config)
        except NotFoundError:
            sys.exit(f"{WORKER_NAME}: stream {stream} not found: the bridge creates the streams, start it first")

    async def serve_durable(self, operation, sub):
        while not self.stopping.is_set():
            try:
                msgs = await sub.fetch(batch=16, timeout=1)
            except (NoMessages, asyncio.TimeoutError):  # nothing to do for now
                continue
            except Exception as e:  # connection trouble: the client reconnects by itself
                if not self.stopping.is_set():
                    log(operation, "pull error:", repr(e))
                    await asyncio.sleep(1)
                continue
            for outcome in await asyncio.gather(*(self.on_durable(operation, m) for m in msgs), return_exceptions=True):
                if isinstance(outcome, Exception):  # unacked: JetStream delivers it again
                    log(operation, "failed:", repr(outcome))
        await sub.unsubscribe()

    async def on_durable(self, operation, msg):
        if self.ack_first:
            await msg.ack()  # The defect: JetStream forgets the message before anything was done.
        try:
            env = decode(msg.data, operation)
        except Poison as e:
            return await self.dead_letter(operation, msg, str(e))
        keepalive = None if self.ack_first else asyncio.create_task(self.keep_in_progress(msg))
        try:
            response, source = await self.durable_reply(env)
        except Exception as e:  # processor unreachable, 5xx, store down: nothing definite
            log(operation, f"key={env['idempotency_key']}", "retry:", str(e) or repr(e))
            if not msg.is_acked:
                await msg.nak(delay=NAK_DELAY_S)
            return
        finally:
            if keepalive:
                keepalive.cancel()
        reply_to = (msg.headers or {}).get("X-Reply-To")
        if reply_to:
            await self.nc.publish(reply_to, json.dumps(response).encode(), headers=reply_headers(env))
            await self.nc.flush()
        log(operation, f"key={env['idempotency_key']}", response["status"], f"({source})")
        if not msg.is_acked:
            await msg.ack()  # Last: the result is stored and the reply has left.

    async def keep_in_progress(self, msg):
        """Tells JetStream the message is being worked on, so a slow call is not redelivered."""
        while True:
            await asyncio.sleep(ACK_WAIT_S / 3)
            try:
                await msg.in_progress()
            except Exception as e:
                log("in-progress ack failed:", repr(e))

    async def dead_letter(self, operation, msg, reason):
        """Copies a poison message to the dead letters (once, by its id), then terminates it."""
        family, action = operation.split(".")
        stream, seq = msg.metadata.stream, msg.metadata.sequence.stream
        headers = dict(msg.headers or {})
        headers.update({"Nats-Msg-Id": f"dlq:{stream}:{seq}", "X-Dlq-Reason": reason, "X-Dlq-Sequence": str(seq)})
        try:
            await self.js.publish(f"{PREFIX}.dlq.{family}.{action}", msg.data, headers=headers)
        except Exception as e:  # not copied: leave it for redelivery rather than lose it
            log(operation, "dead-letter copy failed:", repr(e))
            if not msg.is_acked:
                await msg.nak(delay=1)
            return
        log(operation, f"seq={seq}", "dead-lettered:", reason)
        if not msg.is_acked:
            await msg.term()

    async def on_advisory(self, msg):
        """A message delivered max_deliver times: copy it to the dead letters."""
        try:
            adv = json.loads(msg.data)
            stream, consumer, seq = adv["stream"], adv["consumer"], adv["stream_seq"]
            if not stream.startswith(STREAM_PREFIX + "_") or stream == f"{STREAM_PREFIX}_DLQ":
                return
            # The operation whose consumer this is, whatever its prefix (longest suffix wins).
            matches = [op for op in DURABLE if consumer.endswith("_" + op.replace(".", "_"))]
            if not matches:
                return
            operation = max(matches, key=len)
            original = await self.js.get_msg(stream, seq)
            headers = dict(original.headers or {})
            headers.update({"Nats-Msg-Id": f"dlq:{stream}:{seq}", "X-Dlq-Sequence": str(seq),
                            "X-Dlq-Reason": f"max deliveries ({adv.get('deliveries')}) reached"})
            await self.js.publish(f"{PREFIX}.dlq.{operation}", original.data or b"", headers=headers)
            log(operation, f"seq={seq}", "dead-lettered after max deliveries")
        except Exception as e:
            log("dead-letter move failed:", repr(e))

    async def on_query(self, msg):
        if not msg.reply:
            return
        try:
            env = decode(msg.data)
        except Poison as e:
            body = {"status": "failure", "correlation_id": "", "error": {"code": "INVALID_REQUEST", "message": str(e)}}
            return await self.nc.publish(msg.reply, json.dumps(body).encode())
        response = await answer_query(env)
        await self.nc.publish(msg.reply, json.dumps(response).encode(), headers=reply_headers(env))
        log(env["operation"], f"key={env['idempotency_key']}", response["status"], "(query)")

    async def on_lookup(self, msg):
        """A bridge whose publish was a duplicate asks for the stored reply. Never processes."""
        if not msg.reply:
            return
        found = None
        try:
            env = decode(msg.data)
            record = await self.stored(env)
            if record is not None and record[0] == fingerprint(env):
                found = record[1]
                found["correlation_id"] = env["correlation_id"]
        except Exception:
            found = None
        body = b"" if found is None else json.dumps(found).encode()
        await self.nc.publish(msg.reply, body, headers={"X-Lookup": "miss" if found is None else "hit"})
        log("replies.lookup", "hit" if found is not None else "miss")

    async def run(self):
        await self.open_results()
        on_query, on_lookup = self.concurrently(self.on_query), self.concurrently(self.on_lookup)
        subs = [await self.nc.subscribe(f"{PREFIX}.{op}", queue=QUEUE_GROUP, cb=on_query) for op in QUERIES]
        subs.append(await self.nc.subscribe(f"{PREFIX}.replies.lookup", queue=QUEUE_GROUP, cb=on_lookup))
        subs.append(await self.nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.*.*", queue=QUEUE_GROUP,
                                            cb=self.on_advisory))
        consumers = [await self.consumer(op) for op in DURABLE]
        loops = [asyncio.create_task(self.serve_durable(op, sub)) for op, sub in zip(DURABLE, consumers)]
        await self.nc.flush()
        log(f"ready: {len(DURABLE)} durable operations, {len(QUERIES)} queries, reply lookup",
            "(defect: ack first)" if self.ack_first else "")
        await self.stopping.wait()
        # Stop pulling, let the messages in hand finish, then leave.
        for sub in subs:
            await sub.unsubscribe()
        await asyncio.gather(*loops, *self.tasks, return_exceptions=True)


async def main():
    parser = argparse.ArgumentParser(description="A sample worker of the NATS payment bridge.")
    parser.add_argument("--ack-first", action="store_true",
                        help="DEFECT: ack durable messages on arrival, before the processor and the reply")
    args = parser.parse_args()
    for var in ("NATS_URL", "PROCESSOR_URL"):
        if not os.environ.get(var):
            sys.exit(f"{WORKER_NAME}: {var} is not set")

    async def on_error(e):
        log("nats:", repr(e))

    async def on_disconnect():
        log("nats: disconnected")

    nc = await nats.connect(os.environ["NATS_URL"], name=WORKER_NAME, max_reconnect_attempts=-1,
                            error_cb=on_error, disconnected_cb=on_disconnect)
    worker = Worker(nc, args.ack_first)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    try:
        await worker.run()
        await nc.flush(timeout=2)  # the last replies and acks have left
    finally:
        await nc.close()
    log("stopped")


if __name__ == "__main__":
    asyncio.run(main())
