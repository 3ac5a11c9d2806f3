"""The TLS SMTP sink: the way real relays take mail, on loopback.

    smtp_tls_sink.py MAILDIR CERT KEY STARTTLS_PORT TLS_PORT

STARTTLS (required before anything else, as on port 587) on one port and implicit TLS (as on
465) on the other, each demanding SMTP AUTH with the user and password in SINK_USER and
SINK_PASSWORD, writing what it accepts to MAILDIR (aiosmtpd's Mailbox, as the plain sink).
A wrong password gets 535.
"""
import os
import signal
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    maildir, cert, key, starttls_port, tls_port = sys.argv[1:6]
    user = os.environ["SINK_USER"].encode()
    password = os.environ["SINK_PASSWORD"].encode()
    # One context for both ends: aiosmtpd checks that an implicit-TLS listener is up by
    # connecting to it through the same context, as a client.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS)  # noqa: deprecated, but the only one for both
    context.load_cert_chain(cert, key)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user
            and auth_data.password == password
        )
        # handled=False: aiosmtpd then answers a failure with 535 itself.
        return AuthResult(success=ok, handled=False)

    handler = Mailbox(maildir)
    common = dict(hostname="127.0.0.1", authenticator=authenticate, auth_required=True)
    starttls = Controller(
        handler, port=int(starttls_port), tls_context=context, require_starttls=True, **common
    )
    # aiosmtpd offers AUTH only after STARTTLS unless told otherwise: an implicit-TLS session is
    # encrypted from the first byte, which aiosmtpd 1.4 does not notice.
    implicit = Controller(
        handler, port=int(tls_port), ssl_context=context, auth_require_tls=False, **common
    )
    starttls.start()
    implicit.start()
    print(f"STARTTLS on 127.0.0.1:{starttls_port}, TLS on 127.0.0.1:{tls_port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    implicit.stop()
    starttls.stop()


if __name__ == "__main__":
    main()
