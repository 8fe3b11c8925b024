#!/usr/bin/env bash
# Lists, for every crate's src/, the files each file imports, and reports every pair of files
# that import each other. Exits 1 if there is such a pair.
#
# An import is a `use crate::...`, `use super::...` or `use self::...` line, or such a path
# written out in code (`crate::api::correlation_id()`). A path names the deepest module file
# it reaches: `use crate::nats::reaper::Reaper` imports nats/reaper.rs, `use super::NatsError`
# in nats/container.rs imports nats/mod.rs. Inside an inline module (`mod tests { ... }`) the
# first `super` is the file itself. src/main.rs and src/bin/ are crate roots of their own that
# nothing imports, and are left out; so are `use` lines that start with a child module's bare
# name (`pub use error::NatsError` in a mod.rs).
# Extra arguments are crate directories to check instead of all of them.
set -euo pipefail
shopt -s globstar nullglob
cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ]; then
    crates=("$@")
else
    crates=()
    for src in */src; do
        if [ -f "$src/lib.rs" ]; then crates+=("${src%/src}"); fi
    done
fi

status=0
for crate in "${crates[@]}"; do
    files=()
    for f in "$crate"/src/**/*.rs; do
        f=${f#"$crate/src/"}
        [[ $f == bin/* || $f == main.rs ]] || files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || continue
    (cd "$crate/src" && awk -v crate="$crate" '
        # The module path of a file: a/b.rs and a/b/mod.rs are "a::b", lib.rs is "".
        function module_of(file,    m) {
            m = file
            sub(/\.rs$/, "", m)
            if (m == "lib") m = ""
            sub(/\/mod$/, "", m)
            gsub(/\//, "::", m)
            return m
        }
        # Expands `a::{b, c::{d, e}}` into the paths "a::b", "a::c::d", "a::c::e", one a line.
        function expand(path,    open, depth, i, c, close_at, prefix, inner, rest, part, out, start) {
            open = index(path, "{")
            if (open == 0) return path
            depth = 0
            for (i = open; i <= length(path); i++) {
                c = substr(path, i, 1)
                if (c == "{") depth++
                else if (c == "}") { depth--; if (depth == 0) { close_at = i; break } }
            }
            prefix = substr(path, 1, open - 1)
            inner = substr(path, open + 1, close_at - open - 1)
            rest = substr(path, close_at + 1)
            out = ""
            depth = 0
            start = 1
            for (i = 1; i <= length(inner) + 1; i++) {
                c = (i <= length(inner)) ? substr(inner, i, 1) : ","
                if (c == "{") depth++
                else if (c == "}") depth--
                else if (c == "," && depth == 0) {
                    part = substr(inner, start, i - start)
                    start = i + 1
                    if (part == "") continue
                    out = out (out == "" ? "" : "\n") expand(prefix part rest)
                }
            }
            return out
        }
        # The file a path imports, from the module of the importing file and the depth of the
        # inline modules the path sits in.
        function resolve(path, module, inline,    segs, n, base, nb, i, j, cand, found) {
            sub(/ as [A-Za-z0-9_]+$/, "", path)
            sub(/::self$/, "", path)
            n = split(path, segs, "::")
            nb = 0
            if (segs[1] == "crate") {
                i = 2
            } else {
                if (module != "") nb = split(module, base, "::")
                for (i = 1; i <= inline; i++) base[++nb] = "<inline>"
                for (i = 1; i <= n && (segs[i] == "super" || segs[i] == "self"); i++)
                    if (segs[i] == "super") nb--
                if (nb < 0) return ""
            }
            for (; i <= n; i++) base[++nb] = segs[i]
            for (j = nb; j >= 0; j--) {
                cand = ""
                for (i = 1; i <= j; i++) cand = cand (i > 1 ? "::" : "") base[i]
                if (cand in file_of) return file_of[cand]
            }
            return ""
        }
        function record(path,    target) {
            target = resolve(path, module_of(FILENAME), depth)
            if (target != "" && target != FILENAME) edge[FILENAME, target] = 1
        }
        BEGIN {
            for (a = 1; a < ARGC; a++) file_of[module_of(ARGV[a])] = ARGV[a]
        }
        FNR == 1 { stmt = ""; depth = 0 }
        # Inline modules (rustfmt puts their closing brace at the indent of their `mod`).
        stmt == "" && /^[ \t]*(pub(\([a-z ]+\))?[ \t]+)?mod[ \t]+[A-Za-z0-9_]+[ \t]*\{/ {
            match($0, /^[ \t]*/)
            indent[++depth] = RLENGTH
            next
        }
        stmt == "" && depth > 0 && /^[ \t]*\}/ {
            match($0, /^[ \t]*/)
            if (RLENGTH == indent[depth]) depth--
        }
        stmt == "" && /^[ \t]*(pub(\([a-z ]+\))?[ \t]+)?use[ \t]+(crate|super|self)::/ { stmt = $0 }
        stmt != "" {
            if (stmt != $0) stmt = stmt " " $0
            if (stmt !~ /;/) next
            sub(/;.*/, "", stmt)
            sub(/^[ \t]*(pub(\([a-z ]+\))?[ \t]+)?use[ \t]+/, "", stmt)
            gsub(/[ \t]+/, " ", stmt)
            gsub(/ ?:: ?/, "::", stmt)
            gsub(/ ?\{ ?/, "{", stmt)
            gsub(/ ?\} ?/, "}", stmt)
            gsub(/ ?, ?/, ",", stmt)
            gsub(/,}/, "}", stmt)
            np = split(expand(stmt), paths, "\n")
            for (p = 1; p <= np; p++) record(paths[p])
            stmt = ""
            next
        }
        # A path written out in code, `crate::api::correlation_id()`, imports as well.
        /(crate|super|self)::/ && !/^[ \t]*\/\// {
            code = $0
            gsub(/"([^"\\]|\\.)*"/, "\"\"", code)
            sub(/\/\/.*/, "", code)
            while (match(code, /(^|[^A-Za-z0-9_:])(crate|super|self)(::[A-Za-z_][A-Za-z0-9_]*)+/)) {
                path = substr(code, RSTART, RLENGTH)
                sub(/^[^A-Za-z]/, "", path)
                record(path)
                code = substr(code, RSTART + RLENGTH)
            }
        }
        END {
            print crate "/src"
            for (a = 1; a < ARGC; a++) {
                line = ""
                for (b = 1; b < ARGC; b++)
                    if ((ARGV[a], ARGV[b]) in edge) line = line " " ARGV[b]
                if (line != "") print "  " ARGV[a] " ->" line
            }
            cycles = 0
            for (a = 1; a < ARGC; a++)
                for (b = a + 1; b < ARGC; b++)
                    if ((ARGV[a], ARGV[b]) in edge && (ARGV[b], ARGV[a]) in edge) {
                        print "cycle: " crate "/src/" ARGV[a] " <-> " crate "/src/" ARGV[b]
                        cycles++
                    }
            exit (cycles > 0)
        }
    ' "${files[@]}") || status=1
done
if [ "$status" -ne 0 ]; then
    echo "files import each other: move what both need to one side or to a module of its own" >&2
fi
exit "$status"
