BEGIN { FS = "\037" }
FILENAME == ARGV[1] {
    want[$3] = FNR; tbl[FNR] = $1; kind[FNR] = $2; toc[FNR] = $4; mk[FNR] = $5; alt[FNR] = $6; dep[FNR] = $7
    ref[FNR] = $8
    next
}
{
    i = 0
    if (match($0, /^[0-9]+; [0-9]+ [0-9]+ /)) {
        split(substr($0, 1, RLENGTH), h, " ")
        k = h[2] " " h[3]
        if ((k in want) && index(substr($0, RLENGTH + 1), toc[want[k]]) == 1) i = want[k]
        # a foreign key only when its referenced key is built before it (pg_dump lists keys first)
        if (i && kind[i] == "F" && !(dep[i] in built)) i = 0
    }
    if (!i) { print; next }
    built[k] = 1
    print ";" $0
    f = W "/build/" tbl[i] "." sprintf("%06d", i)
    if (kind[i] == "I") { print $0 > (f ".list"); close(f ".list") }
    else if (kind[i] == "F") {
        # fk/RANK.TABLE.REFERENCED: its ADD and VALIDATE, NUL-terminated (never split at a newline)
        a = W "/fk/" sprintf("%06d", i) "." tbl[i] "." ref[i]; printf "%s%c%s%c", mk[i], 0, alt[i], 0 > a; close(a)
    } else {
        print mk[i] > (f ".sql"); close(f ".sql")
        a = W "/build/" tbl[i] ".keys"; print alt[i] >> a; close(a)
    }
}
