#!/usr/bin/env python3
"""A peer gateway's data channel built on a TLS stack that is not ours.

uring-dataplane/tests/interop.rs runs it against a real s2ds, to check our
TLS 1.3 record layer against independent implementations:

  --stack openssl   libssl (OpenSSL 3) through ctypes: the C library itself,
                    so KeyUpdate and the cipher suite can be chosen
  --stack tlslite   tlslite-ng (pure Python, from PyPI)

--role client plays an outbound gateway: connects to an inbound s2ds,
sends the preamble (magic S2PA, version 1, flags TLS, index 0, uid), needs
the answer 0x06, then sends --bytes and reads the receiver's echo back.
--role server plays an inbound gateway: listens, prints its port on
stdout, takes one connection, checks the preamble's uid (and reads the
origin address that follows it when flag 8 is set), answers 0x06 and
echoes everything back.

Halfway through, --key-update sends a TLS 1.3 KeyUpdate (`plain`: without,
`requested`: with update_requested). At the end the client sends
close_notify and expects one back; the server answers a close_notify with
its own. The last line on stdout is a JSON summary; any failure exits 1
with the reason on stderr.
"""

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import socket
import struct
import sys

ALPN = b"scistream-data/1"
CHUNK = 64 << 10

SUITES = {
    "aes128": ("TLS_AES_128_GCM_SHA256", "aes128gcm"),
    "aes256": ("TLS_AES_256_GCM_SHA384", "aes256gcm"),
    "chacha": ("TLS_CHACHA20_POLY1305_SHA256", "chacha20-poly1305"),
}


def fail(msg):
    print(f"tls_peer: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def preamble(uid):
    u = uid.encode()
    return b"S2PA" + bytes([1, 1]) + struct.pack(">H", 0) + bytes([len(u)]) + u


# ---------------------------------------------------------------- OpenSSL


class OpenSSL:
    """The handful of libssl calls a data channel needs."""

    def __init__(self):
        name = ctypes.util.find_library("ssl") or "libssl.so.3"
        self.lib = lib = ctypes.CDLL(name)
        P, I, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        sigs = {
            "TLS_client_method": ([], P),
            "TLS_server_method": ([], P),
            "SSL_CTX_new": ([P], P),
            "SSL_CTX_ctrl": ([P, I, L, P], L),
            "SSL_CTX_set_ciphersuites": ([P, ctypes.c_char_p], I),
            "SSL_CTX_load_verify_locations": ([P, ctypes.c_char_p, P], I),
            "SSL_CTX_use_certificate_chain_file": ([P, ctypes.c_char_p], I),
            "SSL_CTX_use_PrivateKey_file": ([P, ctypes.c_char_p, I], I),
            "SSL_CTX_set_verify": ([P, I, P], None),
            "SSL_CTX_set_alpn_protos": ([P, ctypes.c_char_p, ctypes.c_uint], I),
            "SSL_CTX_set_alpn_select_cb": ([P, P, P], None),
            "SSL_new": ([P], P),
            "SSL_set_fd": ([P, I], I),
            "SSL_connect": ([P], I),
            "SSL_accept": ([P], I),
            "SSL_read": ([P, P, I], I),
            "SSL_write": ([P, P, I], I),
            "SSL_get_error": ([P, I], I),
            "SSL_key_update": ([P, I], I),
            "SSL_shutdown": ([P], I),
            "SSL_get_current_cipher": ([P], P),
            "SSL_CIPHER_get_name": ([P], ctypes.c_char_p),
        }
        for fn, (args, res) in sigs.items():
            f = getattr(lib, fn)
            f.argtypes, f.restype = args, res
        self.err_lib = ctypes.CDLL(ctypes.util.find_library("crypto") or "libcrypto.so.3")
        self.err_lib.ERR_get_error.restype = ctypes.c_ulong
        self.err_lib.ERR_error_string_n.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t]

    def errors(self):
        out = []
        while True:
            e = self.err_lib.ERR_get_error()
            if not e:
                return "; ".join(out) or "no OpenSSL error queued"
            buf = ctypes.create_string_buffer(256)
            self.err_lib.ERR_error_string_n(e, buf, 256)
            out.append(buf.value.decode())


class OpenSSLConn:
    SSL_CTRL_SET_MIN_PROTO_VERSION = 123
    TLS1_3_VERSION = 0x0304
    SSL_FILETYPE_PEM = 1
    SSL_ERROR_ZERO_RETURN = 6

    def __init__(self, args, sock, server):
        self.o = o = OpenSSL()
        lib = o.lib
        ctx = lib.SSL_CTX_new(lib.TLS_server_method() if server else lib.TLS_client_method())
        lib.SSL_CTX_ctrl(ctx, self.SSL_CTRL_SET_MIN_PROTO_VERSION, self.TLS1_3_VERSION, None)
        if lib.SSL_CTX_set_ciphersuites(ctx, SUITES[args.suite][0].encode()) != 1:
            fail(f"OpenSSL refused the suite: {o.errors()}")
        if lib.SSL_CTX_load_verify_locations(ctx, args.ca.encode(), None) != 1:
            fail(f"OpenSSL could not load {args.ca}: {o.errors()}")
        if lib.SSL_CTX_use_certificate_chain_file(ctx, args.cert.encode()) != 1:
            fail(f"OpenSSL could not load {args.cert}: {o.errors()}")
        if lib.SSL_CTX_use_PrivateKey_file(ctx, args.key.encode(), self.SSL_FILETYPE_PEM) != 1:
            fail(f"OpenSSL could not load {args.key}: {o.errors()}")
        # Verify the peer against the CA (as a client: always; as a server:
        # when the client presents a certificate).
        lib.SSL_CTX_set_verify(ctx, 1, None)
        alpn_wire = bytes([len(ALPN)]) + ALPN
        if server:
            CB = ctypes.CFUNCTYPE(
                ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p),
                ctypes.POINTER(ctypes.c_ubyte), ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p)
            self._keep = ctypes.create_string_buffer(ALPN, len(ALPN))

            def select(_ssl, out, outlen, inp, inlen, _arg):
                offered = ctypes.string_at(inp, inlen)
                if alpn_wire not in offered:
                    return 3  # SSL_TLSEXT_ERR_NOACK
                out[0] = ctypes.cast(self._keep, ctypes.c_char_p)
                outlen[0] = len(ALPN)
                return 0

            self._cb = CB(select)
            lib.SSL_CTX_set_alpn_select_cb(ctx, ctypes.cast(self._cb, ctypes.c_void_p), None)
        else:
            lib.SSL_CTX_set_alpn_protos(ctx, alpn_wire, len(alpn_wire))
        self.ssl = lib.SSL_new(ctx)
        self.sock = sock
        # libssl does its own reads on the descriptor: it must block (Python
        # implements a socket timeout with a non-blocking descriptor), with
        # the kernel's timeouts instead.
        sock.setblocking(True)
        tv = struct.pack("ll", 60, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        lib.SSL_set_fd(self.ssl, sock.fileno())
        r = lib.SSL_accept(self.ssl) if server else lib.SSL_connect(self.ssl)
        if r != 1:
            code = lib.SSL_get_error(self.ssl, r)
            fail(f"OpenSSL handshake failed (SSL_get_error {code}): {o.errors()}")
        self.suite = lib.SSL_CIPHER_get_name(lib.SSL_get_current_cipher(self.ssl)).decode()

    def send(self, data):
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        n = self.o.lib.SSL_write(self.ssl, buf, len(data))
        if n != len(data):
            fail(f"OpenSSL write: {self.o.errors()}")

    def recv(self, n):
        """Up to n bytes; b'' on close_notify."""
        buf = ctypes.create_string_buffer(n)
        r = self.o.lib.SSL_read(self.ssl, buf, n)
        if r > 0:
            return buf.raw[:r]
        if self.o.lib.SSL_get_error(self.ssl, r) == self.SSL_ERROR_ZERO_RETURN:
            return b""
        fail(f"OpenSSL read: the connection ended without close_notify ({self.o.errors()})")

    def key_update(self, requested):
        if self.o.lib.SSL_key_update(self.ssl, 1 if requested else 0) != 1:
            fail(f"OpenSSL key update: {self.o.errors()}")

    def close(self):
        self.o.lib.SSL_shutdown(self.ssl)


# ---------------------------------------------------------------- tlslite-ng


class TlsliteConn:
    def __init__(self, args, sock, server):
        try:
            from tlslite import HandshakeSettings, TLSConnection, X509, X509CertChain
            from tlslite.utils.keyfactory import parsePEMKey
        except ImportError:
            fail("tlslite-ng is not installed (pip install tlslite-ng)")
        settings = HandshakeSettings()
        settings.minVersion = (3, 4)
        settings.maxVersion = (3, 4)
        settings.cipherNames = [SUITES[args.suite][1]]
        # tlslite-ng 0.8.2 compresses its client certificate when its *own*
        # ClientHello offers compression (it reads the wrong message; the
        # server's CertificateRequest offers none), which a correct server
        # (rustls) refuses: send certificates uncompressed.
        settings.certificate_compression_send = []
        chain = X509CertChain([X509().parse(open(args.cert).read())])
        key = parsePEMKey(open(args.key).read(), private=True)
        self.conn = TLSConnection(sock)
        if server:
            self.conn.handshakeServer(certChain=chain, privateKey=key, settings=settings, alpn=[ALPN])
        else:
            self.conn.handshakeClientCert(chain, key, settings=settings, alpn=[ALPN])
            if self.conn.session.appProto != ALPN:
                fail(f"tlslite: the server chose ALPN {self.conn.session.appProto!r}")
        self.suite = self.conn.getCipherName()

    def send(self, data):
        self.conn.write(bytes(data))

    def recv(self, n):
        return self.conn.read(max=n) or b""

    def key_update(self, requested):
        from tlslite.constants import KeyUpdateMessageType as K
        kind = K.update_requested if requested else K.update_not_requested
        for _ in self.conn.send_keyupdate_request(kind):
            pass

    def close(self):
        self.conn.close()


STACKS = {"openssl": OpenSSLConn, "tlslite": TlsliteConn}


def recv_exact(conn, n):
    out = bytearray()
    while len(out) < n:
        b = conn.recv(n - len(out))
        if not b:
            fail(f"the peer closed after {len(out)} of {n} bytes")
        out += b
    return bytes(out)


def pattern(i, n):
    return bytes((i * 131 + k) & 0xFF for k in range(251)) * (n // 251 + 1)


def run_client(args):
    sock = socket.create_connection(parse_addr(args.addr), timeout=60)
    conn = STACKS[args.stack](args, sock, server=False)
    conn.send(preamble(args.uid))
    answer = conn.recv(1)
    if answer != b"\x06":
        fail(f"the inbound gateway answered {answer!r}, not 0x06 (accepted)")
    sent, got = hashlib.sha256(), hashlib.sha256()
    done, updated, i = 0, False, 0
    while done < args.bytes:
        n = min(CHUNK, args.bytes - done)
        data = pattern(i, n)[:n]
        conn.send(data)
        sent.update(data)
        got.update(recv_exact(conn, n))
        done += n
        i += 1
        if not updated and args.key_update != "none" and done >= args.bytes // 2:
            conn.key_update(args.key_update == "requested")
            updated = True
    conn.close()
    rest = conn.recv(1)
    if rest:
        fail(f"data after the echo ended: {rest!r}")
    report(args, conn, done, sent.hexdigest() == got.hexdigest())


def run_server(args):
    host, port = parse_addr(args.addr)
    ls = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    ls.bind((host, port))
    ls.listen(1)
    ls.settimeout(60)
    print(ls.getsockname()[1], flush=True)
    sock, _ = ls.accept()
    sock.settimeout(60)
    conn = STACKS[args.stack](args, sock, server=True)
    head = recv_exact(conn, 9)
    if head[:4] != b"S2PA":
        fail(f"not a preamble: {head!r}")
    uid = recv_exact(conn, head[8]).decode()
    if uid != args.uid:
        fail("the preamble names another uid")
    if head[5] & 8:
        # The origin: family (4 or 6), then from and to: address, port.
        family = recv_exact(conn, 1)[0]
        recv_exact(conn, 2 * ((4 if family == 4 else 16) + 2))
    conn.send(b"\x06")
    echoed, updated = 0, False
    while True:
        b = conn.recv(CHUNK)
        if not b:
            break
        conn.send(b)
        echoed += len(b)
        if not updated and args.key_update != "none" and echoed >= args.bytes // 2:
            conn.key_update(args.key_update == "requested")
            updated = True
    conn.close()
    report(args, conn, echoed, echoed == args.bytes)


def parse_addr(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def report(args, conn, n, ok):
    print(json.dumps({"stack": args.stack, "role": args.role, "suite": conn.suite,
                      "bytes": n, "intact": ok}), flush=True)
    if not ok:
        fail("the bytes that came back differ from those sent")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stack", choices=sorted(STACKS), required=True)
    p.add_argument("--role", choices=["client", "server"], required=True)
    p.add_argument("--addr", required=True, help="HOST:PORT to connect to, or to listen on (port 0: any)")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--uid", required=True)
    p.add_argument("--suite", choices=sorted(SUITES), default="aes128")
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--key-update", choices=["none", "plain", "requested"], default="none")
    args = p.parse_args()
    (run_server if args.role == "server" else run_client)(args)


if __name__ == "__main__":
    main()
