// A fake language model streaming its tokens into herald with one
// request: `POST /.well-known/mercure` with `Content-Type:
// application/x-ndjson`, one update per line, written as each token is
// "generated". The hub publishes each line as it arrives and answers it
// on the response at once (its id, or its error).
//
// Each update's data is JSON: {"i": n, "token": "…", "sent": ms since the
// epoch}, so a page can measure how long a token took to reach it.
//
// Run (Node 18 or later):
//   node examples/token-stream.mjs --hub http://localhost:8080/.well-known/mercure \
//     --token "$JWT" --topic https://example.com/chat/1 --tokens 200 --rate 50
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';

const WORDS = ('Server-Sent Events carry a model\'s answer to the page token by token, '
  + 'through every proxy, and resume where they left off after a reconnect. ').split(/(?<= )/);

// Streams `count` tokens at `rate` per second into `topic`. Resolves with
// the hub's answers, one per token, once the request has ended.
export async function streamTokens({ hub, token, topic, count = 100, rate = 50 }) {
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    async start(controller) {
      const started = Date.now();
      for (let i = 0; i < count; i++) {
        // On schedule, not drifting: token i leaves at i / rate seconds.
        const wait = started + (i * 1000) / rate - Date.now();
        if (wait > 0) await sleep(wait);
        const data = JSON.stringify({ i, token: WORDS[i % WORDS.length], sent: Date.now() });
        controller.enqueue(encoder.encode(JSON.stringify({ topics: [topic], data }) + '\n'));
      }
      controller.close();
    },
  });
  const res = await fetch(hub, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/x-ndjson' },
    body,
    duplex: 'half',
  });
  if (res.status !== 200) throw new Error(`hub answered ${res.status}: ${await res.text()}`);
  const answers = [];
  let rest = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    rest += decoder.decode(chunk, { stream: true });
    let nl;
    while ((nl = rest.indexOf('\n')) >= 0) {
      answers.push(JSON.parse(rest.slice(0, nl)));
      rest = rest.slice(nl + 1);
    }
  }
  return answers;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) => {
    if (a.startsWith('--')) pairs.push([a.slice(2), all[i + 1]]);
    return pairs;
  }, []));
  if (!args.hub || !args.token || !args.topic) {
    console.error('usage: node examples/token-stream.mjs --hub URL --token JWT --topic TOPIC [--tokens N] [--rate PER_SECOND]');
    process.exit(2);
  }
  const answers = await streamTokens({
    hub: args.hub, token: args.token, topic: args.topic,
    count: Number(args.tokens || 100), rate: Number(args.rate || 50),
  });
  const failed = answers.filter((a) => a.error);
  console.log(`${answers.length - failed.length} tokens published, ${failed.length} refused`);
  for (const f of failed) console.error(JSON.stringify(f));
  process.exit(failed.length ? 1 : 0);
}
