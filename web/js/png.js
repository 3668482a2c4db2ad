// A 1x1 PNG carrying one UTF-8 text chunk (iTXt): how the canvas hands a workflow in another format to the
// server's PNG reader (POST /v1/workflow/from-png), which understands every format the engine imports.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  const typed = new TextEncoder().encode(type);
  out.set(typed, 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

// IHDR 1x1 8-bit greyscale, one zlib-compressed scanline [filter 0, pixel 0]
const IHDR = new Uint8Array([0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
const IDAT = new Uint8Array([0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01]);
const SIGNATURE = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);

export function pngWithText(keyword, text) {
  const enc = new TextEncoder();
  const kw = enc.encode(keyword);
  const body = enc.encode(text);
  // keyword \0, compression flag 0, method 0, language "" \0, translated keyword "" \0, UTF-8 text
  const itxt = new Uint8Array(kw.length + 5 + body.length);
  itxt.set(kw, 0);
  itxt.set([0, 0, 0, 0, 0], kw.length);
  itxt.set(body, kw.length + 5);
  const parts = [SIGNATURE, chunk("IHDR", IHDR), chunk("iTXt", itxt), chunk("IDAT", IDAT), chunk("IEND", new Uint8Array())];
  return new Blob(parts, { type: "image/png" });
}
