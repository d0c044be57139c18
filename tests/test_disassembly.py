"""The built extension's micro-kernels keep their accumulators in registers.

An accumulator spilled to the stack in the k loop costs half the speed or more (GCC did
it to every AVX2 loop once, silently): this reads the disassembly of the extension that
is installed (whichever compiler built it) and fails when a loop that does FMAs moves a
vector register to or from the stack."""
import platform
import re
import shutil
import subprocess

import pytest

from fastlinear import _core

# The kernels of each ISA and the innermost loops each must have: float tiles, one per
# height (at least three) and layout of x; integer tiles (int8 activations), one per height.
KERNELS = {"avx2": {"avx2_f32": 6, "avx2_f64": 6, "avx2_i8q": 3, "avx2_i4q": 2},
           "avx512": {"avx512_f32": 6, "avx512_f64": 6, "avx512_i8q": 4, "avx512_i4q": 2},
           "avx512_vnni": {"avx512_vnni_i8q": 4, "avx512_vnni_i4q": 2}}
# The instructions that accumulate: float FMAs, integer dot products (vpdpbusd, and
# vpmaddwd whose products vpaddd adds).
ACCUMULATE = ("vfmadd", "vpdpbusd", "vpmaddwd")
INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
FUNC = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
TARGET = re.compile(r"^([0-9a-f]+) <")
# A vector register moved to or from the stack: an address based on %rsp, or on %rbp where
# the function keeps its frame pointer there (else %rbp is a register like any other).
STACK = {False: r"\(%rsp[,)]", True: r"\(%r[sb]p[,)]"}
VECTOR = r"%[xyz]mm\d+"


def functions(path):
    """name -> [(address, mnemonic, operands)] from objdump."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], check=True,
                          capture_output=True, text=True).stdout
    funcs, current = {}, None
    for line in text.splitlines():
        if m := FUNC.match(line):
            current = funcs.setdefault(m.group(1), [])
        elif (m := INSN.match(line)) and current is not None:
            current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def blocks(insns):
    """The control-flow graph: (start address -> instructions, start -> successors)."""
    targets, leaders = {}, {insns[0][0]}
    for idx, (addr, op, args) in enumerate(insns):
        if op.startswith("j") or op.startswith("ret"):
            m = TARGET.match(args)
            if m:
                targets[addr] = int(m.group(1), 16)
                leaders.add(targets[addr])
            if idx + 1 < len(insns):
                leaders.add(insns[idx + 1][0])
    body, succ, start = {}, {}, None
    for idx, (addr, op, args) in enumerate(insns):
        if addr in leaders:
            start = addr
            body[start], succ[start] = [], set()
        body[start].append((addr, op, args))
        last = idx + 1 == len(insns) or insns[idx + 1][0] in leaders
        if addr in targets:
            succ[start].add(targets[addr])
        if last and idx + 1 < len(insns) and not (op.startswith("jmp") or op.startswith("ret")):
            succ[start].add(insns[idx + 1][0])
    return body, {b: ss & body.keys() for b, ss in succ.items()}


def loops(insns):
    """Instruction lists of the natural loops: a back edge (to a block that dominates its
    source) with every block that reaches it without passing its header. Blocks nothing
    jumps to (entered through a jump table) count as entries beside the first."""
    body, succ = blocks(insns)
    pred = {b: set() for b in body}
    for b, ss in succ.items():
        for s in ss:
            pred[s].add(b)
    entries = {insns[0][0]} | {b for b in body if not pred[b]}
    dom = {b: {b} if b in entries else set(body) for b in body}
    changed = True
    while changed:
        changed = False
        for b in body:
            if b in entries:
                continue
            new = {b} | set.intersection(*(dom[p] for p in pred[b]))
            if new != dom[b]:
                dom[b], changed = new, True
    found = []
    for src, ss in succ.items():
        for head in ss & dom[src]:
            members, stack = {head, src}, [src] if src != head else []
            while stack:
                for p in pred[stack.pop()]:
                    if p not in members:
                        members.add(p)
                        stack.append(p)
            found.append([i for b in sorted(members) for i in body[b]])
    return found


def fma_loops(insns):
    """The loops that do FMAs or integer dot products: the k loops of the micro-kernels
    (and in them any loop the compiler left, such as one filling an array of broadcasts
    on the stack)."""
    return [loop for loop in loops(insns)
            if any(op.startswith(ACCUMULATE) for _, op, _ in loop)]


@pytest.fixture(scope="module")
def disassembly():
    if shutil.which("objdump") is None:
        pytest.fail("objdump (binutils) is needed to read the extension's disassembly")
    funcs = functions(_core.__file__)
    if any(name.startswith("__asan") for name in funcs):
        pytest.skip("an AddressSanitizer build: its loops are instrumented, not tuned")
    return funcs


def test_fma_loops_never_touch_the_stack(disassembly):
    spills = {}
    for name, insns in disassembly.items():
        frame = any(op == "mov" and args == "%rsp,%rbp" for _, op, args in insns[:8])
        stack = re.compile(STACK[frame])
        for loop in fma_loops(insns):
            bad = [f"{addr:x}: {op} {args}" for addr, op, args in loop
                   if re.search(VECTOR, args) and stack.search(args)]
            if bad:
                spills.setdefault(name, []).extend(bad)
    assert not spills, f"vector registers spilled in FMA loops: {spills}"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 kernels")
@pytest.mark.parametrize("isa", list(KERNELS))
def test_every_kernel_is_checked(disassembly, isa):
    """The check above is not vacuous: each kernel is in the build (whatever this CPU
    runs) with its accumulating loops, one per tile height (and layout of x)."""
    for name, count in KERNELS[isa].items():
        assert name in disassembly, f"{name} not in the symbol table of {_core.__file__}"
        assert len(fma_loops(disassembly[name])) >= count, name
