# Baseline for this machine: latency of a trivial TCP echo on loopback (no ringkv).
# Usage: python3 scripts/loopback_echo.py
import socket, threading, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def serve():
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(100)
        if not d: break
        c.sendall(d)
threading.Thread(target=serve, daemon=True).start()
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
lat = []
for i in range(20000):
    t = time.perf_counter(); s.sendall(b"x"*50); s.recv(100); lat.append(time.perf_counter()-t)
lat.sort()
print("p50 %.0f us p99 %.0f us p99.9 %.0f us max %.0f us" % (lat[10000]*1e6, lat[19800]*1e6, lat[19980]*1e6, lat[-1]*1e6))
