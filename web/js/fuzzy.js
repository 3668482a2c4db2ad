// Fuzzy matching for the node search: whole words, prefixes, initials ("cte" -> CLIP Text Encode), letters in
// order ("samplr" -> KSampler) and small typos ("sampelr", "decdoe"). Lower scores are better; null: no match.

/** Words of a name: split at spaces, punctuation and camelCase humps ("KSamplerAdvanced" -> k sampler advanced). */
export function words(text) {
  return String(text)
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .replace(/([A-Z])([A-Z][a-z])/g, "$1 $2")
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter(Boolean);
}

/** Optimal string alignment distance (Levenshtein with adjacent swaps), stopping early past `limit`. */
export function editDistance(a, b, limit = 3) {
  if (Math.abs(a.length - b.length) > limit) return limit + 1;
  let prev2 = null;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    let best = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost);
      if (prev2 && i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, prev2[j - 2] + 1);
      row.push(v);
      best = Math.min(best, v);
    }
    if (best > limit) return limit + 1;
    prev2 = prev;
    prev = row;
  }
  return prev[b.length];
}

function isSubsequence(q, text) {
  let i = 0;
  for (const c of text) if (c === q[i]) i++;
  return i === q.length;
}

function typoLimit(q) {
  return q.length >= 8 ? 2 : q.length >= 4 ? 1 : 0;
}

/** How well one query word matches a name (its words and the whole name run together). */
function scoreWord(q, nameWords, joined) {
  if (nameWords.includes(q)) return 0;
  if (nameWords.some((w) => w.startsWith(q))) return 1;
  if (q.length === 1) return null; // one letter: the start of a word only
  if (joined.startsWith(q)) return 1.5;
  if (joined.includes(q)) return q.length <= 2 ? 3 : 2;
  if (q.length >= 2 && nameWords.map((w) => w[0]).join("").startsWith(q)) return 2.5;
  const limit = typoLimit(q);
  if (limit) {
    // a typo of a whole word ("samplr" -> sampler) beats a typo of a word's start ("samplr" -> sampling)
    let best = null;
    for (const w of nameWords) {
      const whole = editDistance(q, w, limit);
      const start = editDistance(q, w.slice(0, q.length), limit) + 0.5;
      const d = Math.min(whole, start);
      if (d <= limit + 0.5 && (best === null || d < best)) best = d;
    }
    if (best !== null) return 3 + best;
  }
  if (q.length >= 3 && isSubsequence(q, joined)) return 6;
  return null;
}

/**
 * Score a query against the names of one thing (e.g. [title, type]) and its extra words (e.g. its category).
 * Every query word must match something.
 */
export function fuzzyScore(query, names, extra = "") {
  const qWords = words(query);
  if (!qWords.length) return 0;
  const lowered = names.map((n) => String(n).toLowerCase());
  const full = query.trim().toLowerCase();
  if (lowered.includes(full)) return -10;
  let best = null;
  for (const name of names) {
    const nameWords = words(name);
    const joined = nameWords.join("");
    let total = 0;
    for (const q of qWords) {
      let s = scoreWord(q, nameWords, joined);
      if (s === null && extra) s = words(extra).includes(q) ? 4 : null;
      if (s === null) {
        total = null;
        break;
      }
      total += s;
    }
    if (total === null) continue;
    if (lowered.some((n) => n.startsWith(full))) total -= 1;
    if (best === null || total < best) best = total;
  }
  if (best === null) {
    // the whole query typed without spaces ("vaedecode", "cliptext") against the name run together
    const squashed = qWords.join("");
    for (const name of names) {
      const joined = words(name).join("");
      if (squashed.length >= 3 && (joined.startsWith(squashed) || joined.includes(squashed))) return 2;
      const initials = words(name).map((w) => w[0]).join("");
      if (squashed.length >= 2 && initials === squashed) return 2.5;
    }
  }
  return best;
}
