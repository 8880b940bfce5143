#!/usr/bin/env python3
"""SRT listener candidates, measured side by side (BENCHMARK.md, "SRT
listeners"): FFmpeg's libsrt listener, restarted the way relay restarts it,
against srt-live-transmit in front of an FFmpeg reading UDP.

Usage: bench/srt_listeners.py 720p.ts 1080p.ts
(MPEG-TS files with a 2 s GOP, e.g. made with
 ffmpeg -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine -t 25
        -c:v libx264 -preset veryfast -b:v 3M -g 60 -c:a aac -f mpegts 720p.ts)

go-live: caller start to the first decoded frame; back-after-kill: a caller
SIGKILLed and another one started at once, kill to its first frame (relay's
way for FFmpeg: frames stop after 300 ms, two SIGTERMs 300 ms apart, a fresh
listener once the old one is gone); CPU: the SRT transport alone (remux, no
decode), % of one core, of every listener-side process.
"""
import os, subprocess, time, sys, socket, signal, resource
PW = "measure-pass-phrase"
def free_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def caller(port, ts, extra=""):
    return subprocess.Popen(["ffmpeg","-nostdin","-hide_banner","-loglevel","quiet","-re","-i",ts,"-c","copy","-f","mpegts",
        f"srt://127.0.0.1:{port}?mode=caller&latency=200000&passphrase={PW}{extra}"])
def ffmpeg_listener(port, out_args):
    r, w = os.pipe()
    os.write(w, f"ffconcat version 1.0\nfile 'srt://127.0.0.1:{port}?mode=listener&transtype=live&latency=200000'\noption passphrase {PW}\n".encode()); os.close(w)
    p = subprocess.Popen(["ffmpeg","-nostdin","-hide_banner","-loglevel","quiet","-fpsprobesize","0","-analyzeduration","300000",
        "-f","concat","-safe","0","-protocol_whitelist","pipe,srt","-i",f"pipe:{r}"]+out_args, pass_fds=(r,), stdout=subprocess.PIPE)
    os.close(r); return [p]
def slt_listener(port, out_args):
    u = free_udp()
    s = subprocess.Popen(["srt-live-transmit","-q",f"srt://127.0.0.1:{port}?mode=listener&latency=200&passphrase={PW}",f"udp://127.0.0.1:{u}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    f = subprocess.Popen(["ffmpeg","-nostdin","-hide_banner","-loglevel","quiet","-fpsprobesize","0","-analyzeduration","300000",
        "-i",f"udp://127.0.0.1:{u}?fifo_size=100000&overrun_nonfatal=1"]+out_args, stdout=subprocess.PIPE)
    return [s, f]
RAW = ["-map","0:v:0","-vf","scale=64:36","-f","rawvideo","-pix_fmt","yuv420p","pipe:1"]
import threading
def drain(p):
    p.reads=[]
    def run():
        while True:
            b=os.read(p.stdout.fileno(),1<<16)
            if not b: return
            p.reads.append(time.monotonic())
    threading.Thread(target=run,daemon=True).start()
def first_byte(p, t0, timeout=15):
    if not hasattr(p,'reads'): drain(p)
    end=time.monotonic()+timeout
    while time.monotonic()<end:
        if any(t>=t0 for t in p.reads): return min(t for t in p.reads if t>=t0)-t0
        time.sleep(0.01)
    return None
def stop(ps):
    for p in ps:
        try: p.kill()
        except: pass
        p.wait()
def golive(kind, ts):
    port = free_udp()
    ls = (ffmpeg_listener if kind=="ffmpeg" else slt_listener)(port, RAW)
    time.sleep(1.0)
    t0 = time.monotonic(); c = caller(port, ts)
    d = first_byte(ls[-1], t0); stop([c]+ls); return d
def rearm(kind, ts):
    """A caller killed, another back at once: time from the kill to its first frame."""
    port = free_udp()
    mk = ffmpeg_listener if kind=="ffmpeg" else slt_listener
    ls = mk(port, RAW); time.sleep(1.0)
    c = caller(port, ts); first_byte(ls[-1], time.monotonic()); time.sleep(2)
    c.send_signal(signal.SIGKILL); c.wait(); t0 = time.monotonic()
    if kind == "ffmpeg":
        # relay: frames stop (OFFLINE_AFTER_MS 300 ms) -> SIGTERM the listener, start a fresh one when it is gone
        time.sleep(0.3); ls[0].terminate(); time.sleep(0.3); ls[0].terminate(); ls[0].wait(); t_gone=time.monotonic(); print('  old listener gone after kill', round(t_gone-t0,3), flush=True)
        ls = mk(port, RAW)
        re = time.monotonic()-t_gone
    else:
        # drain what the old connection left in the reader
        re = None
    c2 = None; deadline = t0+20; d=None
    time.sleep(0.05)
    start = time.monotonic(); tries=0
    p = ls[-1]
    if not hasattr(p,'reads'): drain(p)
    while time.monotonic() < deadline:
        if c2 is None or c2.poll() is not None:
            c2 = caller(port, ts, "&connect_timeout=1000"); tries+=1
        fresh=[t for t in p.reads if t>=start]
        if fresh: d = fresh[0]-t0; print('  callers tried', tries, flush=True); break
        time.sleep(0.01)
    stop([c2]+ls); return d, re
def cpu(kind, ts, secs=15):
    port = free_udp()
    ls = (ffmpeg_listener if kind=="ffmpeg" else slt_listener)(port, ["-map","0","-c","copy","-f","null","-"])
    time.sleep(1.0); c = caller(port, ts); time.sleep(secs)
    total=0.0
    for p in ls:
        with open(f"/proc/{p.pid}/stat") as f: fields=f.read().rsplit(")",1)[1].split()
        total += (int(fields[11])+int(fields[12]))/os.sysconf("SC_CLK_TCK")
    stop([c]+ls); return total/secs*100
TS720, TS1080 = sys.argv[1], sys.argv[2]
for kind in ["ffmpeg","slt"]:
    g=[golive(kind,TS720) for _ in range(3)]
    r=[rearm(kind,TS720) for _ in range(2)]
    c7=cpu(kind,TS720); c10=cpu(kind,TS1080)
    print(kind, "go-live s", [round(x,2) if x else None for x in g], "back-after-kill s (listener restart s)", [(round(a,2) if a else None, round(b,3) if b else None) for a,b in r], "transport CPU %% 720p3M %.1f 1080p6M %.1f" % (c7,c10), flush=True)
