// Deterministic random values for the tests that compare many generated values against PostgreSQL: a failure
// names a seed and a value that can be reproduced.

/** mulberry32: a small deterministic PRNG. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function intBetween(random: () => number, min: number, max: number): number {
  return min + Math.floor(random() * (max - min + 1));
}

/** `length` decimal digits. */
export function digits(random: () => number, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += String(intBetween(random, 0, 9));
  return s;
}
