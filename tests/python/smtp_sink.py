#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for the notifier tests: accepts every
message on 127.0.0.1:PORT and writes each one, as received (headers and
MIME body), to DIR/<n>.eml, plus DIR/<n>.rcpt with the envelope recipients.

Usage: smtp_sink.py PORT DIR [MODE CERT KEY]

MODE `starttls`: STARTTLS is offered and required before MAIL (submission,
587); `implicit`: TLS from the first byte (465). CERT/KEY: the server's PEM
certificate and key.
"""
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller

port, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)


class Sink:
    def __init__(self):
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        tmp = os.path.join(out, f"{self.n}.tmp")
        with open(tmp, "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(os.path.join(out, f"{self.n}.rcpt"), "w") as f:
            f.write("\n".join(envelope.rcpt_tos))
        # Renamed last: a reader never sees half a message.
        os.rename(tmp, os.path.join(out, f"{self.n}.eml"))
        return "250 OK"


tls = {}
if len(sys.argv) > 3:
    mode, cert, key = sys.argv[3], sys.argv[4], sys.argv[5]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if mode == "starttls":
        tls = {"tls_context": context, "require_starttls": True}
    elif mode == "implicit":
        tls = {"ssl_context": context}
    else:
        sys.exit(f"unknown TLS mode {mode!r} (starttls or implicit)")

controller = Controller(Sink(), hostname="127.0.0.1", port=port, **tls)
controller.start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
except KeyboardInterrupt:
    pass
finally:
    controller.stop()
