"""A real SMTP server for the e-mail tests: aiosmtpd on 127.0.0.1, every accepted message
appended to a JSON-lines file (envelope, decoded subject and body, the raw data). Options: STARTTLS or implicit TLS with a given certificate,
AUTH PLAIN/LOGIN required with one user.

  python3 smtp_sink.py --port P --out FILE [--cert C --key K (--starttls | --tls)]
                       [--user U --password W]

Prints "ready" on stdout once it accepts connections; stops on SIGTERM.
"""
import argparse
import asyncio
import email
import email.policy
import json
import signal
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, out):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        rec = {
            "subject": str(msg["Subject"]),
            "message_id": str(msg["Message-ID"]),
            "mail_to": str(msg["To"]),
            "body": msg.get_content(),
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
            "tls": server.transport.get_extra_info("ssl_object") is not None or session.ssl is not None,
            "auth": session.auth_data.login.decode() if session.authenticated and session.auth_data else None,
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return "250 OK"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--user")
    p.add_argument("--password")
    a = p.parse_args()

    ctx = None
    if a.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)

    kwargs = {}
    if a.user:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login.decode() == a.user
                  and auth_data.password.decode() == a.password)
            if ok:
                return AuthResult(success=True, auth_data=auth_data)
            return AuthResult(success=False, handled=False)
        kwargs.update(authenticator=authenticator, auth_required=True,
                      # aiosmtpd only knows STARTTLS as TLS; implicit TLS is TLS too.
                      auth_require_tls=a.starttls)
    if a.starttls:
        kwargs.update(tls_context=ctx, require_starttls=True)
    controller = Controller(Sink(a.out), hostname="127.0.0.1", port=a.port,
                            ssl_context=ctx if a.tls else None, **kwargs)
    controller.start()
    print("ready", flush=True)
    stop = asyncio.new_event_loop()
    signal.signal(signal.SIGTERM, lambda *_: stop.call_soon_threadsafe(stop.stop))
    signal.signal(signal.SIGINT, lambda *_: stop.call_soon_threadsafe(stop.stop))
    stop.run_forever()
    controller.stop()


if __name__ == "__main__":
    sys.exit(main())
