# Shell helpers shared by the scripts in scripts/: messages, free loopback ports and stopping
# a process within a time limit. Source it after setting `script_name`; it defines functions only.

# Debian keeps server binaries (mariadbd) in sbin directories, which a non-login root shell
# may not have on its PATH.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" ;;
esac
export PATH

log() {
    printf '%s: %s\n' "${script_name:-script}" "$*" >&2
}

die() {
    log "$*"
    exit 1
}

# Prints N distinct TCP ports on 127.0.0.1 that the kernel reports free, separated by spaces.
# All sockets are bound at once so that the kernel cannot hand out one port twice.
free_ports() { # count
    python3 - "$1" <<'EOF'
import socket
import sys

sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
for s in sockets:
    s.close()
EOF
}

# Succeeds while PID is a live process.
pid_alive() { # pid
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null
}

# Sends SIGTERM to PID, waits up to TIMEOUT seconds for it to exit, then sends SIGKILL and
# waits 10 s more. Returns 1 if the process is still there after that.
stop_pid() { # pid timeout_seconds
    local pid=$1 timeout=$2
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while pid_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "process $pid did not exit within ${timeout}s of SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while pid_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
    fi
    ! pid_alive "$pid"
}
