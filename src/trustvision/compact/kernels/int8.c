/* The integer kernels of `trustvision compact export-c --variant int8` (compact/c_int8.py),
   pasted into every generated int8 model file. */
static int64_t requantize(int32_t acc, int32_t m, int shift) {
    int64_t p = (int64_t)acc * m, half = (int64_t)1 << (shift - 1);
    return p >= 0 ? (p + half) >> shift : -((-p + half) >> shift);
}

static uint8_t saturate(int64_t v, int32_t low) {
    return (uint8_t)(v < low ? low : (v > 255 ? 255 : v));
}

static void qconv(const uint8_t *in, uint8_t *out, int c, int h, int w, int oc, int k, int dw,
                  int32_t zin, int32_t zout, int32_t low, const int8_t *wt, const int32_t *b,
                  const int32_t *m, const int8_t *sh) {
    int p = k / 2;
    for (int o = 0; o < oc; o++) {
        int first = dw ? o : 0, count = dw ? 1 : c;
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                int32_t acc = b[o];
                for (int i = 0; i < count; i++) {
                    const uint8_t *plane = in + (first + i) * h * w;
                    const int8_t *kern = wt + ((o * count) + i) * k * k;
                    for (int dy = 0; dy < k; dy++) {
                        int yy = y + dy - p;
                        if (yy < 0 || yy >= h) continue;
                        for (int dx = 0; dx < k; dx++) {
                            int xx = x + dx - p;
                            if (xx < 0 || xx >= w) continue;
                            acc += ((int32_t)plane[yy * w + xx] - zin) * kern[dy * k + dx];
                        }
                    }
                }
                out[(o * h + y) * w + x] = saturate(requantize(acc, m[o], sh[o]) + zout, low);
            }
        }
    }
}

static void qmaxpool2(const uint8_t *in, uint8_t *out, int c, int h, int w) {
    int oh = h / 2, ow = w / 2;
    for (int ch = 0; ch < c; ch++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                const uint8_t *p = in + (ch * h + 2 * y) * w + 2 * x;
                uint8_t v = p[0];
                if (p[1] > v) v = p[1];
                if (p[w] > v) v = p[w];
                if (p[w + 1] > v) v = p[w + 1];
                out[(ch * oh + y) * ow + x] = v;
            }
}

static void qavgpool(const uint8_t *in, uint8_t *out, int c, int h, int w, int32_t zin,
                     int32_t zout, int32_t low, const int32_t *m, const int8_t *sh) {
    for (int ch = 0; ch < c; ch++) {
        int32_t acc = 0;
        for (int i = 0; i < h * w; i++) acc += (int32_t)in[ch * h * w + i] - zin;
        out[ch] = saturate(requantize(acc, m[0], sh[0]) + zout, low);
    }
}

static void qlinear(const uint8_t *in, uint8_t *out, int n, int mo, int32_t zin, int32_t zout,
                    int32_t low, const int8_t *wt, const int32_t *b, const int32_t *m,
                    const int8_t *sh) {
    for (int o = 0; o < mo; o++) {
        int32_t acc = b[o];
        for (int i = 0; i < n; i++) acc += ((int32_t)in[i] - zin) * wt[o * n + i];
        out[o] = saturate(requantize(acc, m[o], sh[o]) + zout, low);
    }
}
