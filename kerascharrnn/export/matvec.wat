;; The runtime's one hot loop in WebAssembly SIMD: out (n) += x (m) @ w (m x n, row-major), float32, four rows of w
;; and four columns at a time. runtime.js carries it compiled (base64, MATVEC_WASM); after editing this file run
;;   python3 scripts/build_web_kernel.py
;; which compiles it with wabt's wat2wasm (npm) and writes the bytes into runtime.js.
(module
  (memory (export "memory") 1)
  (func (export "matvec") (param $out i32) (param $x i32) (param $w i32) (param $m i32) (param $n i32)
    (local $i i32) (local $j i32) (local $n4 i32) (local $row i32) (local $stride i32)
    (local $a v128) (local $b v128) (local $c v128) (local $d v128)
    (local $r0 i32) (local $r1 i32) (local $r2 i32) (local $r3 i32) (local $o i32) (local $xs f32)
    (local.set $n4 (i32.and (local.get $n) (i32.const -4)))
    (local.set $stride (i32.shl (local.get $n) (i32.const 2)))
    ;; four rows at a time
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.gt_s (i32.add (local.get $i) (i32.const 4)) (local.get $m)))
        (local.set $a (f32x4.splat (f32.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2))))))
        (local.set $b (f32x4.splat (f32.load offset=4 (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2))))))
        (local.set $c (f32x4.splat (f32.load offset=8 (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2))))))
        (local.set $d (f32x4.splat (f32.load offset=12 (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2))))))
        (local.set $r0 (i32.add (local.get $w) (i32.mul (local.get $i) (local.get $stride))))
        (local.set $r1 (i32.add (local.get $r0) (local.get $stride)))
        (local.set $r2 (i32.add (local.get $r1) (local.get $stride)))
        (local.set $r3 (i32.add (local.get $r2) (local.get $stride)))
        (local.set $j (i32.const 0))
        (block $cols_done
          (loop $cols
            (br_if $cols_done (i32.ge_s (local.get $j) (local.get $n4)))
            (local.set $o (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 2))))
            (v128.store (local.get $o)
              (f32x4.add (v128.load (local.get $o))
                (f32x4.add
                  (f32x4.add (f32x4.mul (local.get $a) (v128.load (i32.add (local.get $r0) (i32.shl (local.get $j) (i32.const 2)))))
                             (f32x4.mul (local.get $b) (v128.load (i32.add (local.get $r1) (i32.shl (local.get $j) (i32.const 2))))))
                  (f32x4.add (f32x4.mul (local.get $c) (v128.load (i32.add (local.get $r2) (i32.shl (local.get $j) (i32.const 2)))))
                             (f32x4.mul (local.get $d) (v128.load (i32.add (local.get $r3) (i32.shl (local.get $j) (i32.const 2)))))))))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $cols)))
        ;; the columns past the last multiple of four, one at a time
        (block $tail_done
          (loop $tail
            (br_if $tail_done (i32.ge_s (local.get $j) (local.get $n)))
            (local.set $o (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 2))))
            (f32.store (local.get $o)
              (f32.add (f32.load (local.get $o))
                (f32.add
                  (f32.add (f32.mul (f32x4.extract_lane 0 (local.get $a)) (f32.load (i32.add (local.get $r0) (i32.shl (local.get $j) (i32.const 2)))))
                           (f32.mul (f32x4.extract_lane 0 (local.get $b)) (f32.load (i32.add (local.get $r1) (i32.shl (local.get $j) (i32.const 2))))))
                  (f32.add (f32.mul (f32x4.extract_lane 0 (local.get $c)) (f32.load (i32.add (local.get $r2) (i32.shl (local.get $j) (i32.const 2)))))
                           (f32.mul (f32x4.extract_lane 0 (local.get $d)) (f32.load (i32.add (local.get $r3) (i32.shl (local.get $j) (i32.const 2)))))))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $tail)))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $rows)))
    ;; the rows past the last multiple of four, one at a time
    (block $left_done
      (loop $left
        (br_if $left_done (i32.ge_s (local.get $i) (local.get $m)))
        (local.set $xs (f32.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $a (f32x4.splat (local.get $xs)))
        (local.set $r0 (i32.add (local.get $w) (i32.mul (local.get $i) (local.get $stride))))
        (local.set $j (i32.const 0))
        (block $cols1_done
          (loop $cols1
            (br_if $cols1_done (i32.ge_s (local.get $j) (local.get $n4)))
            (local.set $o (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 2))))
            (v128.store (local.get $o)
              (f32x4.add (v128.load (local.get $o))
                (f32x4.mul (local.get $a) (v128.load (i32.add (local.get $r0) (i32.shl (local.get $j) (i32.const 2)))))))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $cols1)))
        (block $tail1_done
          (loop $tail1
            (br_if $tail1_done (i32.ge_s (local.get $j) (local.get $n)))
            (local.set $o (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 2))))
            (f32.store (local.get $o)
              (f32.add (f32.load (local.get $o))
                (f32.mul (local.get $xs) (f32.load (i32.add (local.get $r0) (i32.shl (local.get $j) (i32.const 2)))))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $tail1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $left)))))
