#!/usr/bin/env python3
"""Generates spec/vectors/*.vec from the tables of spec/pvirq-v1.md.

This encoder is written from the specification alone and shares no code with the Rust
implementation, so the vectors check the Rust code against the document, not against
itself. Run from the repository root:  python3 spec/tools/vectors.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "vectors")

OPCODES = {"query": 1, "alloc": 2, "free": 3, "retarget": 4, "reset": 5}
KINDS = {"msi": 1, "msix": 2, "ims": 3}
STATUSES = {"ok": 0, "no-space": 1, "bad-request": 2, "unsupported": 3, "no-device": 4,
            "index-out-of-range": 5, "index-in-use": 6, "not-granted": 7,
            "invalid-target": 8, "batch-too-large": 9, "response-too-small": 10,
            "device-error": 11}
RESOURCES = {"none": 0, "vm-quota": 1, "device-slots": 2, "irte": 3, "host-vector": 4,
             "guest-route": 5, "irte-fragmented": 6, "slots-fragmented": 7, "device-share": 8,
             "device-removed": 9}
FIELDS = {"none": 0, "length": 1, "opcode": 2, "header-reserved": 3, "kind": 4, "flags": 5,
          "body-reserved": 6, "first-index": 7, "count": 8, "pasid": 9, "target-vcpu": 10,
          "target-vector": 11, "target-reserved": 12, "num-targets": 13, "index-list": 14}
ANY_INDEX, PASID_FLAG, PARKED_FLAG, SPREAD_FLAG, CONTIGUOUS_FLAG = 1, 2, 4, 8, 16
LIST_FLAG, PARK_FLAG = 1, 2

# Feature bits (§2.2).
F = {"msi": 1 << 0, "msix": 1 << 1, "ims": 1 << 2, "pasid": 1 << 3, "retarget": 1 << 4,
     "apic-id": 1 << 5, "info": 1 << 6, "posted": 1 << 7, "parked": 1 << 8, "events": 1 << 9,
     "spread": 1 << 10, "contiguous": 1 << 11, "index-list": 1 << 12, "version-1": 1 << 32,
     "access-platform": 1 << 33}
V1 = F["msi"] | F["msix"] | F["ims"] | F["pasid"] | F["retarget"] | F["version-1"]
ALL = sum(F.values())
FORMATS = {"vtd-remappable": 1, "amd-remapped": 2, "vmm-trapped": 3}
MODES = {"remapped": 0, "posted": 1}
EVENTS = {"reprogram": 1, "revoke": 2, "limits": 3, "available": 4, "device-added": 5,
          "device-removed": 6}


def header(op, device, tag, r0=0, r1=0):
    return struct.pack("<BBHIQ", op, r0, r1, device, tag)


def alloc_body(kind, flags, first, lo, hi, pasid, reserved=0):
    return struct.pack("<BBHIHHI", kind, flags, reserved, first, lo, hi, pasid)


def range_body(kind, first, count, r0=0, r1=0, r2=0, r3=0):
    """§4.6: with an extension negotiated, `r0` is the `flags` byte."""
    return struct.pack("<BBHIHHI", kind, r0, r1, first, count, r2, r3)


def index_list(indices):
    return b"".join(struct.pack("<I", i) for i in indices)


def target(vcpu, vector, reserved=b"\0\0\0"):
    return struct.pack("<IB", vcpu, vector) + reserved


def resp_header(op, status, detail, device, tag, count, info, reserved=0):
    return struct.pack("<BBBBIQII", op, status, detail, reserved, device, tag, count, info)


def grant(index, address, data):
    return struct.pack("<IIII", index, address & 0xFFFFFFFF, address >> 32, data)


def grant_info(index, address, data, mode=0, parked=False, pasid=None, reserved=0, flags=None):
    """§4.5: the 24-byte record of PVIRQ_F_INFO."""
    if flags is None:
        flags = (1 if parked else 0) | (2 if pasid is not None else 0)
    return grant(index, address, data) + struct.pack("<BBHI", mode, flags, reserved, pasid or 0)


def grant_info_text(index, address, data, mode=0, parked=False, pasid=None):
    text = f"{index}:{address:#x}:{data:#x}:{'posted' if mode else 'remapped'}"
    if parked:
        text += ":parked"
    if pasid is not None:
        text += f":pasid={pasid:#x}"
    return text


def query_ext(segment, bus, devfn, rid, fmt, pasid, can_post, share, msix_run, ims_run, drops,
              flags=None, reserved=b"\0" * 14):
    """§4.4: the 40 bytes PVIRQ_F_INFO appends to the QUERY body."""
    if flags is None:
        flags = (1 if pasid is not None else 0) | (2 if can_post else 0)
    return (struct.pack("<HBBHBBIIH", segment, bus, devfn, rid, fmt, flags, pasid or 0, share,
                        msix_run) + reserved[:2] + struct.pack("<II", ims_run, drops)
            + reserved[2:])


def event(etype, device, seq, kind=0, detail=0, index=0, value=0, address=0, data=0,
          reserved=0):
    """§12: the 32-byte event record."""
    return struct.pack("<BBBBIIIIIII", etype, kind, detail, reserved, device, seq, index, value,
                       address & 0xFFFFFFFF, address >> 32, data)


def remappable(handle, sub):
    """§3.2: address bits 19:5 handle[14:0], 4 format, 3 SHV, 2 handle[15]."""
    lo = 0xFEE00000 | (handle & 0x7FFF) << 5 | 1 << 4 | (handle >> 15) << 2
    if sub is None:
        return lo, 0
    return lo | 1 << 3, sub


def compat(dest, vector, delivery=0, logical=0, rh=0, level=0):
    lo = 0xFEE00000 | (dest & 0xFF) << 12 | rh << 3 | logical << 2
    hi = dest & 0xFFFFFF00
    data = vector | delivery << 8 | (3 << 14 if level else 0)
    return hi << 32 | lo, data


def hexlines(data):
    rows = [" ".join(f"{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    if not rows:
        return " "
    return "\n        ".join(rows)


class File:
    def __init__(self, name, title):
        self.name, self.entries = name, [f"# {title}\n# Format: spec/vectors/README.md. "
                                         "Generated by spec/tools/vectors.py.\n"]

    def add(self, name, **fields):
        lines = [f"[{name}]"]
        for key, value in fields.items():
            if key == "bytes":
                value = hexlines(value)
            lines.append(f"{key} = {value}")
        self.entries.append("\n".join(lines) + "\n")

    def write(self):
        with open(os.path.join(OUT, self.name), "w") as f:
            f.write("\n".join(self.entries))


def targets_text(ts):
    return "[" + ",".join(f"{v}:{vec:#x}" for v, vec in ts) + "]"


def requests():
    f = File("requests.vec", "Valid requests: bytes and their canonical text (spec §4, §7).")
    f.add("query", type="request", max_batch=256, bytes=header(1, 3, 1),
          text="query device=3 tag=0x1")
    f.add("reset", type="request", max_batch=256, bytes=header(5, 0xFFFFFFFF, 2**64 - 1),
          text="reset device=4294967295 tag=0xffffffffffffffff")
    ts = [(0, 0x30), (1, 0x31), (0, 0x32), (1, 0x33)]
    f.add("alloc-msix-any-1-to-4", type="request", max_batch=256,
          bytes=header(2, 7, 0x2A) + alloc_body(2, ANY_INDEX, 0, 1, 4, 0)
          + b"".join(target(*t) for t in ts),
          text=f"alloc device=7 tag=0x2a kind=msix index=any count=1..4 pasid=none "
               f"targets={targets_text(ts)}")
    ts = [(3, 0xFF), (2, 0x20)]
    f.add("alloc-msix-at-index-5", type="request", max_batch=2,
          bytes=header(2, 0, 0x10) + alloc_body(2, 0, 5, 2, 2, 0)
          + b"".join(target(*t) for t in ts),
          text=f"alloc device=0 tag=0x10 kind=msix index=5 count=2..2 pasid=none "
               f"targets={targets_text(ts)}")
    ts = [(i % 2, 0x40 + i) for i in range(8)]
    f.add("alloc-msi-block-2-to-8", type="request", max_batch=256,
          bytes=header(2, 1, 0x11) + alloc_body(1, 0, 0, 2, 8, 0)
          + b"".join(target(*t) for t in ts),
          text=f"alloc device=1 tag=0x11 kind=msi index=0 count=2..8 pasid=none "
               f"targets={targets_text(ts)}")
    ts = [(1, 0x50)]
    f.add("alloc-ims-with-pasid", type="request", max_batch=256,
          bytes=header(2, 2, 0x12) + alloc_body(3, ANY_INDEX | PASID_FLAG, 0, 1, 1, 0xFFFFF)
          + target(*ts[0]),
          text=f"alloc device=2 tag=0x12 kind=ims index=any count=1..1 pasid=0xfffff "
               f"targets={targets_text(ts)}")
    f.add("free-run-ending-at-the-last-index", type="request", max_batch=256,
          bytes=header(3, 0, 0x2D) + range_body(3, 0xFFFFFFFE, 2),
          text="free device=0 tag=0x2d kind=ims index=4294967294 count=2")
    f.add("free-msix-run", type="request", max_batch=256,
          bytes=header(3, 7, 0x2B) + range_body(2, 3, 2),
          text="free device=7 tag=0x2b kind=msix index=3 count=2")
    ts = [(1, 0x40), (0, 0x41)]
    f.add("retarget-ims-two", type="request", max_batch=256,
          bytes=header(4, 2, 0x2C) + range_body(3, 5, 2) + b"".join(target(*t) for t in ts),
          text=f"retarget device=2 tag=0x2c kind=ims index=5 count=2 targets={targets_text(ts)}")
    f.write()


def malformed_requests():
    f = File("malformed-requests.vec",
             "Malformed requests and the refusal a device must answer (spec §5.3).")
    t = target(0, 0x30)
    ok_alloc = header(2, 7, 1) + alloc_body(2, ANY_INDEX, 0, 1, 1, 0) + t

    def add(name, data, refusal, max_batch=256):
        f.add(name, type="request", max_batch=max_batch, bytes=data, refusal=refusal)

    add("empty", b"", "bad-request field=length entry=0")
    add("header-truncated", header(1, 0, 0)[:15], "bad-request field=length entry=0")
    add("opcode-zero", header(0, 0, 0), "unsupported field=opcode")
    add("opcode-unknown", header(6, 0, 0), "unsupported field=opcode")
    add("header-reserved0", header(1, 0, 0, r0=1), "bad-request field=header-reserved entry=0")
    add("header-reserved1", header(1, 0, 0, r1=0x100), "bad-request field=header-reserved entry=0")
    add("query-trailing-byte", header(1, 0, 0) + b"\0", "bad-request field=length entry=0")
    add("alloc-body-truncated", header(2, 0, 0) + alloc_body(2, 1, 0, 1, 1, 0)[:15],
        "bad-request field=length entry=0")
    add("alloc-kind-zero", header(2, 0, 0) + alloc_body(0, 1, 0, 1, 1, 0) + t,
        "unsupported field=kind")
    add("alloc-kind-unknown", header(2, 0, 0) + alloc_body(4, 1, 0, 1, 1, 0) + t,
        "unsupported field=kind")
    add("alloc-undefined-flag", header(2, 0, 0) + alloc_body(2, 0x81, 0, 1, 1, 0) + t,
        "bad-request field=flags entry=0")
    add("alloc-body-reserved", header(2, 0, 0) + alloc_body(2, 1, 0, 1, 1, 0, reserved=1) + t,
        "bad-request field=body-reserved entry=0")
    add("alloc-min-zero", header(2, 0, 0) + alloc_body(2, 1, 0, 0, 1, 0) + t,
        "bad-request field=count entry=0")
    add("alloc-min-above-max", header(2, 0, 0) + alloc_body(2, 1, 0, 2, 1, 0) + t,
        "bad-request field=count entry=0")
    add("alloc-over-max-batch", header(2, 0, 0) + alloc_body(2, 1, 0, 1, 3, 0) + t * 3,
        "batch-too-large max_batch=2", max_batch=2)
    add("alloc-any-with-index", header(2, 0, 0) + alloc_body(2, 1, 9, 1, 1, 0) + t,
        "bad-request field=first-index entry=0")
    add("alloc-index-overflow", header(2, 0, 0) + alloc_body(2, 0, 0xFFFFFFFF, 2, 2, 0) + t * 2,
        "index-out-of-range index=4294967295")
    add("alloc-msi-not-power-of-two", header(2, 0, 0) + alloc_body(1, 0, 0, 3, 3, 0) + t * 3,
        "bad-request field=count entry=0")
    add("alloc-msi-over-32", header(2, 0, 0) + alloc_body(1, 0, 0, 64, 64, 0) + t * 64,
        "bad-request field=count entry=0")
    add("alloc-msi-nonzero-index", header(2, 0, 0) + alloc_body(1, 0, 4, 1, 1, 0) + t,
        "bad-request field=first-index entry=0")
    add("alloc-pasid-on-msix", header(2, 0, 0) + alloc_body(2, 3, 0, 1, 1, 5) + t,
        "bad-request field=pasid entry=0")
    add("alloc-pasid-21-bits", header(2, 0, 0) + alloc_body(3, 3, 0, 1, 1, 1 << 20) + t,
        "bad-request field=pasid entry=0")
    add("alloc-pasid-without-flag", header(2, 0, 0) + alloc_body(3, 1, 0, 1, 1, 7) + t,
        "bad-request field=pasid entry=0")
    add("alloc-missing-target", header(2, 0, 0) + alloc_body(2, 1, 0, 1, 2, 0) + t,
        "bad-request field=length entry=0")
    add("alloc-extra-target", ok_alloc + t, "bad-request field=length entry=0")
    add("alloc-target-reserved", header(2, 0, 0) + alloc_body(2, 1, 0, 1, 2, 0) + t
        + target(1, 0x31, b"\0\x01\0"), "bad-request field=target-reserved entry=1")
    add("alloc-targets-checked-one-at-a-time", header(2, 0, 0) + alloc_body(2, 1, 0, 1, 2, 0)
        + target(0, 0x1F) + target(1, 0x31, b"\0\x01\0"),
        "invalid-target field=target-vector entry=0")
    add("alloc-target-vector-exception", header(2, 0, 0) + alloc_body(2, 1, 0, 1, 2, 0) + t
        + target(1, 0x1F), "invalid-target field=target-vector entry=1")
    add("free-reserved", header(3, 0, 0) + range_body(2, 0, 1, r3=1),
        "bad-request field=body-reserved entry=0")
    add("free-count-zero", header(3, 0, 0) + range_body(2, 0, 0),
        "bad-request field=count entry=0")
    add("free-over-max-batch", header(3, 0, 0) + range_body(2, 0, 5),
        "batch-too-large max_batch=4", max_batch=4)
    # Decoder-only: no device advertises a max_batch above 4096 (§2.4); this checks that a
    # decoder given a larger limit applies 4096 (§5.3 step 3).
    f.add("free-over-protocol-batch-limit", type="request", max_batch=65535, decoder_only="yes",
          bytes=header(3, 0, 0) + range_body(2, 0, 5000), refusal="batch-too-large max_batch=4096")
    add("free-run-one-past-the-last-index", header(3, 0, 0) + range_body(3, 0xFFFFFFFE, 3),
        "index-out-of-range index=4294967294")
    add("free-with-targets", header(3, 0, 0) + range_body(2, 0, 1) + t,
        "bad-request field=length entry=0")
    add("retarget-index-overflow", header(4, 0, 0) + range_body(3, 0xFFFFFFFE, 3) + t * 3,
        "index-out-of-range index=4294967294")
    add("retarget-missing-target", header(4, 0, 0) + range_body(3, 0, 2) + t,
        "bad-request field=length entry=0")
    f.write()


def responses():
    f = File("responses.vec", "Valid responses: bytes and their canonical text (spec §4, §5).")
    q = struct.pack("<IHHIIII", 0b011, 8, 64, 0, 2, 32, 30)
    f.add("query-ok", type="response", bytes=resp_header(1, 0, 0, 3, 1, 0, 30) + q,
          text="query device=3 tag=0x1 ok quota_remaining=30 kinds=msi|msix msi_max=8 "
               "msix_table_size=64 ims_slots=0 granted=2 vm_quota=32 available=30")
    g = [(0, *remappable(0x1C, 0)), (1, *remappable(0x8001, 0))]
    text = ",".join(f"{i}:{a:#x}:{d:#x}" for i, a, d in g)
    f.add("alloc-ok-two-msix", type="response",
          bytes=resp_header(2, 0, 0, 7, 0x2A, 2, 12) + b"".join(grant(*x) for x in g),
          text=f"alloc device=7 tag=0x2a ok quota_remaining=12 grants=[{text}]")
    g = [(i, *remappable(64, i)) for i in range(4)]
    text = ",".join(f"{i}:{a:#x}:{d:#x}" for i, a, d in g)
    f.add("alloc-ok-msi-block-of-4", type="response",
          bytes=resp_header(2, 0, 0, 1, 0x11, 4, 0) + b"".join(grant(*x) for x in g),
          text=f"alloc device=1 tag=0x11 ok quota_remaining=0 grants=[{text}]")
    f.add("free-ok", type="response", bytes=resp_header(3, 0, 0, 7, 0x2B, 2, 14),
          text="free device=7 tag=0x2b ok count=2 quota_remaining=14")
    f.add("retarget-ok", type="response", bytes=resp_header(4, 0, 0, 2, 0x2C, 2, 14),
          text="retarget device=2 tag=0x2c ok count=2 quota_remaining=14")
    f.add("reset-ok-nothing-held", type="response", bytes=resp_header(5, 0, 0, 2, 9, 0, 32),
          text="reset device=2 tag=0x9 ok count=0 quota_remaining=32")
    refusals = [
        ("no-space-irte", 2, "no-space", RESOURCES["irte"], 3,
         "no-space resource=irte available=3"),
        ("no-space-quota", 2, "no-space", RESOURCES["vm-quota"], 0,
         "no-space resource=vm-quota available=0"),
        ("bad-request-target", 2, "bad-request", FIELDS["target-reserved"], 1,
         "bad-request field=target-reserved entry=1"),
        ("unsupported-kind", 2, "unsupported", FIELDS["kind"], 0, "unsupported field=kind"),
        ("no-device", 1, "no-device", 0, 0, "no-device"),
        ("index-out-of-range", 2, "index-out-of-range", 0, 2048, "index-out-of-range index=2048"),
        ("index-in-use", 2, "index-in-use", 0, 5, "index-in-use index=5"),
        ("not-granted", 3, "not-granted", 0, 4, "not-granted index=4"),
        ("invalid-target-vcpu", 4, "invalid-target", FIELDS["target-vcpu"], 0,
         "invalid-target field=target-vcpu entry=0"),
        ("batch-too-large", 2, "batch-too-large", 0, 256, "batch-too-large max_batch=256"),
        ("response-too-small", 2, "response-too-small", 0, 88, "response-too-small needed=88"),
        ("device-error-route", 2, "device-error", RESOURCES["guest-route"], 0,
         "device-error resource=guest-route"),
        ("retarget-not-negotiated", 4, "unsupported", FIELDS["opcode"], 0,
         "unsupported field=opcode"),
    ]
    names = {v: k for k, v in OPCODES.items()}
    for name, op, status, detail, info, text in refusals:
        f.add(name, type="response", bytes=resp_header(op, STATUSES[status], detail, 7, 5, 0, info),
              text=f"{names[op]} device=7 tag=0x5 {text}")
    f.add("unknown-opcode-echoed", type="response",
          bytes=resp_header(0x42, STATUSES["unsupported"], FIELDS["opcode"], 0, 0, 0, 0),
          text="op(0x42) device=0 tag=0x0 unsupported field=opcode")
    f.write()


def malformed_responses():
    f = File("malformed-responses.vec",
             "Responses a driver must reject, and why (spec §4.3, [DRV-8]).")

    def add(name, data, reject):
        f.add(name, type="response", bytes=data, reject=reject)

    add("empty", b"", "length")
    add("header-truncated", resp_header(3, 0, 0, 0, 0, 1, 0)[:23], "length")
    add("header-reserved", resp_header(3, 0, 0, 0, 0, 1, 0, reserved=1), "reserved")
    add("status-unknown", resp_header(2, 12, 0, 0, 0, 0, 0), "status")
    add("no-space-unknown-resource", resp_header(2, 1, 6, 0, 0, 0, 0), "status")
    add("no-device-with-detail", resp_header(2, 4, 1, 0, 0, 0, 0), "status")
    add("ok-with-detail", resp_header(3, 0, 1, 0, 0, 1, 0), "status")
    add("refusal-with-count", resp_header(2, 1, 3, 0, 0, 1, 0), "count")
    add("refusal-with-body", resp_header(2, 1, 3, 0, 0, 0, 0) + b"\0" * 16, "length")
    add("alloc-ok-zero-grants", resp_header(2, 0, 0, 0, 0, 0, 0), "count")
    add("alloc-ok-count-beyond-body", resp_header(2, 0, 0, 0, 0, 3, 0)
        + grant(0, *remappable(1, 0)) * 2, "length")
    add("alloc-ok-count-huge", resp_header(2, 0, 0, 0, 0, 0xFFFFFFFF, 0), "length")
    add("query-ok-short-body", resp_header(1, 0, 0, 0, 0, 0, 0) + b"\0" * 20, "length")
    add("query-ok-with-count", resp_header(1, 0, 0, 0, 0, 1, 0) + b"\0" * 24, "count")
    add("query-ok-undefined-kind", resp_header(1, 0, 0, 0, 0, 0, 0)
        + struct.pack("<IHHIIII", 0b1000, 0, 0, 0, 0, 0, 0), "kinds")
    add("query-ok-msi-max-3", resp_header(1, 0, 0, 0, 0, 0, 0)
        + struct.pack("<IHHIIII", 0b001, 3, 0, 0, 0, 0, 0), "msi-max")
    add("ok-unknown-opcode", resp_header(9, 0, 0, 0, 0, 0, 0), "opcode")
    f.write()


def msi():
    f = File("msi.vec", "MSI messages in remappable and compatibility format (spec §3.2).")
    for handle, sub in [(0, None), (0x1C, 0), (0x7FFF, 0), (0x8000, 0), (0xFFFF, 0),
                        (64, 3)]:
        address, data = remappable(handle, sub)
        irte = handle + (sub or 0)
        f.add(f"remappable-{handle:#x}-{'none' if sub is None else sub}",
              type="msi-remappable", handle=f"{handle:#x}",
              subhandle="none" if sub is None else f"{sub:#x}",
              address=f"{address:#x}", data=f"{data:#x}", irte=irte)
    for name, address, data, reject in [
        ("remappable-outside-window", 0xFED00010, 0, "window"),
        ("remappable-high-address", 1 << 32 | 0xFEE00010, 0, "reserved"),
        ("remappable-low-bits", 0xFEE00011, 0, "reserved"),
        ("remappable-data-high-bits", 0xFEE00018, 0x10000, "reserved"),
        ("remappable-data-without-shv", 0xFEE00010, 1, "reserved"),
        ("remappable-is-compat", 0xFEE01000, 0x30, "format"),
    ]:
        f.add(name, type="msi-remappable", address=f"{address:#x}", data=f"{data:#x}",
              reject=reject)
    for dest, vector, delivery, logical, rh, level in [
        (0, 0x20, "fixed", 0, 0, 0), (1, 0xFF, "fixed", 0, 0, 0),
        (255, 0x41, "lowest-priority", 1, 1, 0), (0x1234, 0x30, "fixed", 0, 0, 1),
        (2, 0x02, "nmi", 0, 0, 0),
    ]:
        modes = {"fixed": 0, "lowest-priority": 1, "smi": 2, "nmi": 4, "init": 5, "extint": 7}
        address, data = compat(dest, vector, modes[delivery], logical, rh, level)
        f.add(f"compat-dest-{dest}-vector-{vector:#x}", type="msi-compat", dest=dest,
              vector=f"{vector:#x}", delivery=delivery, logical=logical, rh=rh, level=level,
              address=f"{address:#x}", data=f"{data:#x}")
    for name, address, data, reject in [
        ("compat-is-remappable", 0xFEE00010, 0, "format"),
        ("compat-reserved-delivery-mode", 0xFEE00000, 3 << 8 | 0x30, "delivery"),
        ("compat-reserved-address-bits", 0xFEE00020, 0x30, "reserved"),
        ("compat-outside-window", 0xFEC00000, 0x30, "window"),
    ]:
        f.add(name, type="msi-compat", address=f"{address:#x}", data=f"{data:#x}",
              reject=reject)
    f.write()


def config():
    f = File("config.vec", "The device configuration space (spec §2.4).")
    f.add("config-typical", type="config", bytes=struct.pack("<HHIII", 1, 256, 3, 64, 4),
          text="version=1 max_batch=256 num_devices=3 vm_quota=64 num_vcpus=4")
    f.write()


def fx(*names):
    """A feature set: version 1 plus the named extension bits, as the vectors print it."""
    bits = V1
    for n in names:
        bits |= F[n]
    return f"{bits:#x}"


def requests_ext():
    f = File("requests-ext.vec",
             "Valid requests that use extensions (spec §2.2, §4.5-§4.7), each decoded under the "
             "features it names.")
    ts = [(0x10, 0x30), (0x12, 0x31)]
    f.add("alloc-apic-id-targets", type="request", max_batch=256, features=fx("apic-id"),
          bytes=header(2, 0, 0x20) + alloc_body(2, ANY_INDEX, 0, 2, 2, 0)
          + b"".join(target(*t) for t in ts),
          text=f"alloc device=0 tag=0x20 kind=msix index=any count=2..2 pasid=none "
               f"targets={targets_text(ts)}")
    f.add("alloc-parked", type="request", max_batch=256, features=fx("info", "parked"),
          bytes=header(2, 1, 0x21) + alloc_body(2, ANY_INDEX | PARKED_FLAG, 0, 4, 16, 0),
          text="alloc device=1 tag=0x21 kind=msix index=any count=4..16 pasid=none "
               "targets=parked")
    ts = [(0, 0x40), (1, 0x40), (2, 0x40), (3, 0x40)]
    f.add("alloc-spread-over-four", type="request", max_batch=256, features=fx("info", "spread"),
          bytes=header(2, 1, 0x22) + alloc_body(2, ANY_INDEX | SPREAD_FLAG, 0, 1, 32, 0,
                                                reserved=4)
          + b"".join(target(*t) for t in ts),
          text=f"alloc device=1 tag=0x22 kind=msix index=any count=1..32 pasid=none "
               f"targets=spread{targets_text(ts)}")
    ts = [(0, 0x50)] * 3
    f.add("alloc-any-contiguous", type="request", max_batch=256,
          features=fx("info", "contiguous"),
          bytes=header(2, 2, 0x23) + alloc_body(2, ANY_INDEX | CONTIGUOUS_FLAG, 0, 3, 3, 0)
          + b"".join(target(*t) for t in ts),
          text=f"alloc device=2 tag=0x23 kind=msix index=any-contiguous count=3..3 pasid=none "
               f"targets={targets_text(ts)}")
    f.add("alloc-ims-parked-with-pasid", type="request", max_batch=256,
          features=fx("info", "parked"),
          bytes=header(2, 3, 0x24) + alloc_body(3, ANY_INDEX | PASID_FLAG | PARKED_FLAG, 0, 1,
                                                 2, 0x42),
          text="alloc device=3 tag=0x24 kind=ims index=any count=1..2 pasid=0x42 "
               "targets=parked")
    f.add("free-list", type="request", max_batch=256, features=fx("info", "index-list"),
          bytes=header(3, 1, 0x25) + range_body(2, 0, 3, r0=LIST_FLAG) + index_list([1, 5, 9]),
          text="free device=1 tag=0x25 kind=msix index=[1,5,9]")
    ts = [(0, 0x41), (1, 0x42)]
    f.add("retarget-list", type="request", max_batch=256, features=fx("info", "index-list"),
          bytes=header(4, 1, 0x26) + range_body(2, 0, 2, r0=LIST_FLAG) + index_list([2, 7])
          + b"".join(target(*t) for t in ts),
          text=f"retarget device=1 tag=0x26 kind=msix index=[2,7] targets={targets_text(ts)}")
    f.add("retarget-park-run", type="request", max_batch=256, features=fx("info", "parked"),
          bytes=header(4, 1, 0x27) + range_body(2, 4, 2, r0=PARK_FLAG),
          text="retarget device=1 tag=0x27 kind=msix index=4 count=2 targets=park")
    f.add("retarget-park-list", type="request", max_batch=256,
          features=fx("info", "parked", "index-list"),
          bytes=header(4, 1, 0x28) + range_body(3, 0, 2, r0=LIST_FLAG | PARK_FLAG)
          + index_list([0, 3]),
          text="retarget device=1 tag=0x28 kind=ims index=[0,3] targets=park")
    f.write()


def malformed_requests_ext():
    f = File("malformed-requests-ext.vec",
             "Requests refused under the features each names (spec §5.3): extension bytes a "
             "driver did not negotiate are refused exactly as version 1 refuses them.")
    t = target(0, 0x30)

    def add(name, features, data, refusal, max_batch=256):
        f.add(name, type="request", max_batch=max_batch, features=features, bytes=data,
              refusal=refusal)

    # Version 1 answers, whatever the bytes mean to an extension.
    add("v1-alloc-parked-flag", fx(), header(2, 0, 0) + alloc_body(2, 5, 0, 1, 1, 0) + t,
        "bad-request field=flags entry=0")
    add("v1-alloc-num-targets", fx(), header(2, 0, 0) + alloc_body(2, 9, 0, 1, 1, 0, reserved=1)
        + t, "bad-request field=flags entry=0")
    add("v1-alloc-reserved-is-num-targets", fx(),
        header(2, 0, 0) + alloc_body(2, 1, 0, 1, 1, 0, reserved=1) + t,
        "bad-request field=body-reserved entry=0")
    add("v1-free-list-flag", fx(), header(3, 0, 0) + range_body(2, 0, 1, r0=LIST_FLAG)
        + index_list([0]), "bad-request field=body-reserved entry=0")
    add("v1-retarget-park-flag", fx(), header(4, 0, 0) + range_body(2, 0, 1, r0=PARK_FLAG),
        "bad-request field=body-reserved entry=0")
    # A flag whose own bit was not negotiated, beside one that was.
    add("spread-not-negotiated", fx("info", "parked"),
        header(2, 0, 0) + alloc_body(2, 9, 0, 1, 1, 0, reserved=1) + t,
        "bad-request field=flags entry=0")
    add("num-targets-reserved-without-spread", fx("info", "parked"),
        header(2, 0, 0) + alloc_body(2, 1, 0, 1, 1, 0, reserved=1) + t,
        "bad-request field=body-reserved entry=0")
    add("park-not-negotiated", fx("info", "index-list"),
        header(4, 0, 0) + range_body(2, 0, 1, r0=LIST_FLAG | PARK_FLAG) + index_list([0]),
        "bad-request field=flags entry=0")
    add("range-flags-undefined-bit", fx("info", "parked", "index-list"),
        header(3, 0, 0) + range_body(2, 0, 1, r0=4), "bad-request field=flags entry=0")
    add("free-park-flag", fx("info", "parked"),
        header(3, 0, 0) + range_body(2, 0, 1, r0=PARK_FLAG), "bad-request field=flags entry=0")
    # Combinations and values.
    add("parked-with-spread", fx("info", "parked", "spread"),
        header(2, 0, 0) + alloc_body(2, 1 | PARKED_FLAG | SPREAD_FLAG, 0, 1, 1, 0, reserved=1)
        + t, "bad-request field=flags entry=0")
    add("contiguous-without-any-index", fx("info", "contiguous"),
        header(2, 0, 0) + alloc_body(2, CONTIGUOUS_FLAG, 0, 1, 1, 0) + t,
        "bad-request field=flags entry=0")
    add("spread-zero-targets", fx("info", "spread"),
        header(2, 0, 0) + alloc_body(2, 1 | SPREAD_FLAG, 0, 1, 4, 0),
        "bad-request field=num-targets entry=0")
    add("spread-over-max-batch", fx("info", "spread"),
        header(2, 0, 0) + alloc_body(2, 1 | SPREAD_FLAG, 0, 1, 2, 0, reserved=5) + t * 5,
        "bad-request field=num-targets entry=0", max_batch=4)
    add("num-targets-without-spread", fx("info", "spread"),
        header(2, 0, 0) + alloc_body(2, 1, 0, 1, 1, 0, reserved=1) + t,
        "bad-request field=num-targets entry=0")
    add("parked-with-targets", fx("info", "parked"),
        header(2, 0, 0) + alloc_body(2, 1 | PARKED_FLAG, 0, 1, 1, 0) + t,
        "bad-request field=length entry=0")
    add("spread-missing-target", fx("info", "spread"),
        header(2, 0, 0) + alloc_body(2, 1 | SPREAD_FLAG, 0, 1, 8, 0, reserved=2) + t,
        "bad-request field=length entry=0")
    add("free-list-with-index", fx("info", "index-list"),
        header(3, 0, 0) + range_body(2, 3, 1, r0=LIST_FLAG) + index_list([3]),
        "bad-request field=first-index entry=0")
    add("free-list-short", fx("info", "index-list"),
        header(3, 0, 0) + range_body(2, 0, 3, r0=LIST_FLAG) + index_list([1, 2]),
        "bad-request field=length entry=0")
    add("free-list-not-increasing", fx("info", "index-list"),
        header(3, 0, 0) + range_body(2, 0, 3, r0=LIST_FLAG) + index_list([1, 4, 4]),
        "bad-request field=index-list entry=2")
    add("free-list-over-max-batch", fx("info", "index-list"),
        header(3, 0, 0) + range_body(2, 0, 3, r0=LIST_FLAG) + index_list([1, 2, 3]),
        "batch-too-large max_batch=2", max_batch=2)
    add("retarget-list-checked-before-targets", fx("info", "index-list"),
        header(4, 0, 0) + range_body(2, 0, 2, r0=LIST_FLAG) + index_list([7, 3])
        + target(0, 0x1F) + t, "bad-request field=index-list entry=1")
    add("retarget-park-with-targets", fx("info", "parked"),
        header(4, 0, 0) + range_body(2, 0, 1, r0=PARK_FLAG) + t,
        "bad-request field=length entry=0")
    f.write()


def responses_ext():
    f = File("responses-ext.vec",
             "Valid responses under PVIRQ_F_INFO (spec §4.4, §4.5, §3.3), each decoded under "
             "the features it names.")
    q = struct.pack("<IHHIIII", 0b110, 0, 2048, 512, 3, 64, 40)
    qx = query_ext(0, 3, 0x10, 0x0310, FORMATS["vtd-remappable"], None, True, 16, 2000, 300, 7)
    f.add("query-ok-extended", type="response", features=fx("info"),
          bytes=resp_header(1, 0, 0, 2, 1, 0, 61) + q + qx,
          text="query device=2 tag=0x1 ok quota_remaining=61 kinds=msix|ims msi_max=0 "
               "msix_table_size=2048 ims_slots=512 granted=3 vm_quota=64 available=40 "
               "segment=0x0 bus=0x3 devfn=0x10 requester_id=0x310 format=vtd-remappable "
               "identity_flags=can-post pasid=0x0 share=16 msix_free_run=2000 ims_free_run=300 "
               "parked_drops=7")
    qx = query_ext(1, 0x80, 0x08, 0x8008, FORMATS["amd-remapped"], 0x1234, False, 64, 0, 0, 0)
    q = struct.pack("<IHHIIII", 0b100, 0, 0, 1024, 0, 64, 64)
    f.add("query-ok-scalable-interface", type="response", features=fx("info"),
          bytes=resp_header(1, 0, 0, 0, 2, 0, 64) + q + qx,
          text="query device=0 tag=0x2 ok quota_remaining=64 kinds=ims msi_max=0 "
               "msix_table_size=0 ims_slots=1024 granted=0 vm_quota=64 available=64 "
               "segment=0x1 bus=0x80 devfn=0x8 requester_id=0x8008 format=amd-remapped "
               "identity_flags=pasid-valid pasid=0x1234 share=64 msix_free_run=0 ims_free_run=0 "
               "parked_drops=0")
    a, d = remappable(0x40, 0)
    g = [dict(index=0, address=a, data=d, mode=0),
         dict(index=1, address=remappable(0x41, 0)[0], data=0, mode=1),
         dict(index=2, address=remappable(0x42, 0)[0], data=0, mode=1, parked=True)]
    text = ",".join(grant_info_text(**x) for x in g)
    f.add("alloc-ok-info-records", type="response", features=fx("info", "posted", "parked"),
          bytes=resp_header(2, 0, 0, 1, 0x21, 3, 13) + b"".join(grant_info(**x) for x in g),
          text=f"alloc device=1 tag=0x21 ok quota_remaining=13 grants=[{text}]")
    g = [dict(index=7, address=0xFEE00000, data=0x1C, pasid=0x42)]
    text = ",".join(grant_info_text(**x) for x in g)
    f.add("alloc-ok-amd-ims-with-pasid", type="response", features=fx("info"),
          bytes=resp_header(2, 0, 0, 3, 0x24, 1, 10) + b"".join(grant_info(**x) for x in g),
          text=f"alloc device=3 tag=0x24 ok quota_remaining=10 grants=[{text}]")
    for name, res, info in [("no-space-irte-fragmented", "irte-fragmented", 2),
                            ("no-space-slots-fragmented", "slots-fragmented", 3),
                            ("no-space-device-share", "device-share", 0)]:
        f.add(name, type="response", features=fx("info"),
              bytes=resp_header(2, STATUSES["no-space"], RESOURCES[res], 7, 5, 0, info),
              text=f"alloc device=7 tag=0x5 no-space resource={res} available={info}")
    f.add("bad-request-index-list", type="response", features=fx("info", "index-list"),
          bytes=resp_header(3, STATUSES["bad-request"], FIELDS["index-list"], 7, 5, 0, 2),
          text="free device=7 tag=0x5 bad-request field=index-list entry=2")
    f.add("bad-request-num-targets", type="response", features=fx("info", "spread"),
          bytes=resp_header(2, STATUSES["bad-request"], FIELDS["num-targets"], 7, 5, 0, 0),
          text="alloc device=7 tag=0x5 bad-request field=num-targets entry=0")
    f.write()


def malformed_responses_ext():
    f = File("malformed-responses-ext.vec",
             "Responses a driver must reject under the features each names (spec §4.4, §4.5).")

    def add(name, features, data, reject):
        f.add(name, type="response", features=features, bytes=data, reject=reject)

    a, d = remappable(0x40, 0)
    q = struct.pack("<IHHIIII", 0b010, 0, 64, 0, 0, 64, 64)
    qx = query_ext(0, 3, 0x10, 0x0310, 1, None, False, 64, 64, 0, 0)
    add("v1-driver-gets-extended-query", fx(), resp_header(1, 0, 0, 0, 0, 0, 64) + q + qx,
        "length")
    add("info-driver-gets-v1-query", fx("info"), resp_header(1, 0, 0, 0, 0, 0, 64) + q,
        "length")
    add("v1-driver-gets-info-record", fx(), resp_header(2, 0, 0, 0, 0, 1, 0)
        + grant_info(0, a, d), "length")
    add("v1-driver-gets-fragmented-irte", fx(), resp_header(2, 1, 6, 0, 0, 0, 0), "status")
    add("v1-driver-gets-index-list-field", fx(), resp_header(3, 2, 14, 0, 0, 0, 0), "status")
    add("query-unknown-format", fx("info"), resp_header(1, 0, 0, 0, 0, 0, 64) + q
        + query_ext(0, 3, 0x10, 0x0310, 4, None, False, 64, 64, 0, 0), "message-format")
    add("query-format-zero", fx("info"), resp_header(1, 0, 0, 0, 0, 0, 64) + q
        + query_ext(0, 3, 0x10, 0x0310, 0, None, False, 64, 64, 0, 0), "message-format")
    add("query-undefined-identity-flag", fx("info"), resp_header(1, 0, 0, 0, 0, 0, 64) + q
        + query_ext(0, 3, 0x10, 0x0310, 1, None, False, 64, 64, 0, 0, flags=4), "reserved")
    add("query-pasid-without-flag", fx("info"), resp_header(1, 0, 0, 0, 0, 0, 64) + q
        + query_ext(0, 3, 0x10, 0x0310, 1, None, False, 64, 64, 0, 0, flags=0)[:8]
        + struct.pack("<I", 5) + query_ext(0, 3, 0x10, 0x0310, 1, None, False, 64, 64, 0, 0)[12:],
        "reserved")
    add("query-pasid-21-bits", fx("info"), resp_header(1, 0, 0, 0, 0, 0, 64) + q
        + query_ext(0, 3, 0x10, 0x0310, 1, 1 << 20, False, 64, 64, 0, 0), "pasid")
    add("query-extended-reserved", fx("info"), resp_header(1, 0, 0, 0, 0, 0, 64) + q
        + query_ext(0, 3, 0x10, 0x0310, 1, None, False, 64, 64, 0, 0,
                    reserved=b"\0" * 13 + b"\1"), "reserved")
    add("grant-unknown-mode", fx("info"), resp_header(2, 0, 0, 0, 0, 1, 0)
        + grant_info(0, a, d, mode=2), "mode")
    add("grant-undefined-flag", fx("info"), resp_header(2, 0, 0, 0, 0, 1, 0)
        + grant_info(0, a, d, flags=4), "reserved")
    add("grant-reserved", fx("info"), resp_header(2, 0, 0, 0, 0, 1, 0)
        + grant_info(0, a, d, reserved=1), "reserved")
    add("grant-pasid-without-flag", fx("info"), resp_header(2, 0, 0, 0, 0, 1, 0)
        + grant(0, a, d) + struct.pack("<BBHI", 0, 0, 0, 9), "reserved")
    add("grant-records-of-16-under-info", fx("info"), resp_header(2, 0, 0, 0, 0, 3, 0)
        + grant(0, a, d) * 3, "length")
    f.write()


def events():
    f = File("events.vec", "Event records (spec §12): valid ones with their canonical text, "
             "and records a driver must reject.")
    a, d = remappable(0x1C, 0)
    valid = [
        ("reprogram", event(1, 0, 1, kind=2, detail=0, index=3, address=a, data=d),
         f"event seq=1 reprogram device=0 kind=msix mode=remapped index=3 message={a:#x}:{d:#x}"),
        ("reprogram-posted-ims", event(1, 2, 2, kind=3, detail=1, index=9, address=0xFEE00000,
                                       data=0x21),
         "event seq=2 reprogram device=2 kind=ims mode=posted index=9 message=0xfee00000:0x21"),
        ("revoke-irte", event(2, 0, 3, kind=2, detail=RESOURCES["irte"], index=4),
         "event seq=3 revoke device=0 kind=msix reason=irte index=4"),
        ("revoke-host-refused", event(2, 1, 4, kind=1, detail=0, index=0),
         "event seq=4 revoke device=1 kind=msi reason=none index=0"),
        ("limits-vm", event(3, 0xFFFFFFFF, 5, value=48),
         "event seq=5 limits device=vm limit=48"),
        ("limits-device-share", event(3, 1, 6, value=8),
         "event seq=6 limits device=1 limit=8"),
        ("available", event(4, 1, 7, value=6), "event seq=7 available device=1 count=6"),
        ("device-added", event(5, 3, 8), "event seq=8 device-added device=3"),
        ("device-removed", event(6, 2, 0xFFFFFFFF), "event seq=4294967295 device-removed device=2"),
    ]
    for name, data, text in valid:
        f.add(name, type="event", bytes=data, text=text)
    reject = [
        ("short", event(5, 3, 8)[:31], "length"),
        ("long", event(5, 3, 8) + b"\0", "length"),
        ("type-zero", event(0, 0, 1), "event-type"),
        ("type-unknown", event(7, 0, 1), "event-type"),
        ("reserved", event(5, 3, 1, reserved=1), "reserved"),
        ("reprogram-kind-zero", event(1, 0, 1, kind=0, index=3, address=a, data=d), "kind"),
        ("reprogram-unknown-mode", event(1, 0, 1, kind=2, detail=2, index=3, address=a, data=d),
         "mode"),
        ("revoke-unknown-reason", event(2, 0, 1, kind=2, detail=10, index=3), "resource"),
        ("revoke-with-message", event(2, 0, 1, kind=2, detail=3, index=3, address=a), "reserved"),
        ("limits-with-kind", event(3, 0xFFFFFFFF, 1, kind=2, value=3), "reserved"),
        ("available-with-index", event(4, 1, 1, index=2, value=3), "reserved"),
        ("device-added-with-value", event(5, 3, 1, value=1), "reserved"),
        ("device-removed-for-vm", event(6, 0xFFFFFFFF, 1), "device"),
    ]
    for name, data, why in reject:
        f.add(name, type="event", bytes=data, reject=why)
    f.write()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    requests()
    malformed_requests()
    responses()
    malformed_responses()
    msi()
    config()
    requests_ext()
    malformed_requests_ext()
    responses_ext()
    malformed_responses_ext()
    events()
