// The watchdog's arithmetic alone: quorum and consensus counts for two to five instances, with and without
// enable_consensus_with_half_votes, the election order, and how votes are counted.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareCandidates, countVotes, electLeader, failoverAllowed, hasQuorum, majority, quorumState } from '../../src/cluster/watchdog-quorum';

test('a quorum is more than half, or half with enable_consensus_with_half_votes and an even count', () => {
  assert.deepEqual([1, 2, 3, 4, 5].map((n) => majority(n, false)), [1, 2, 2, 3, 3]);
  assert.deepEqual([1, 2, 3, 4, 5].map((n) => majority(n, true)), [1, 1, 2, 2, 3]);
  assert.equal(hasQuorum(2, 3, false), true);
  assert.equal(hasQuorum(1, 3, false), false);
  assert.equal(hasQuorum(1, 2, false), false);
  assert.equal(hasQuorum(1, 2, true), true);
  assert.deepEqual([quorumState(3, 3, false), quorumState(2, 3, false), quorumState(1, 3, false)], [1, 1, -1]);
  assert.deepEqual([quorumState(1, 2, true), quorumState(1, 2, false), quorumState(2, 4, true), quorumState(3, 4, false)], [0, -1, 0, 1]);
});

test('the election takes the highest priority, then the smallest name, whatever the order', () => {
  const a = { name: '127.0.0.1:9001', priority: 1 };
  const b = { name: '127.0.0.1:9002', priority: 5 };
  const c = { name: '127.0.0.1:9000', priority: 5 };
  assert.equal(electLeader([a, b, c]), c);
  assert.equal(electLeader([b, a, c]), c);
  assert.equal(electLeader([a, b]), b);
  assert.equal(electLeader([]), null);
  assert.ok(compareCandidates(c, b) < 0 && compareCandidates(b, a) < 0 && compareCandidates(a, a) === 0);
});

test('votes count once per instance unless multiple requests are allowed, and only while fresh', () => {
  const votes = [{ from: 'a', at: 0 }, { from: 'a', at: 500 }, { from: 'b', at: 900 }];
  assert.equal(countVotes(votes, 1000, 60_000, false), 2);
  assert.equal(countVotes(votes, 1000, 60_000, true), 3);
  assert.equal(countVotes(votes, 1000, 300, false), 1);
});

test('a failover needs quorum and consensus, each of which can be turned off', () => {
  const base = { total: 3, halfVotes: false, whenQuorumExists: true, requireConsensus: true };
  assert.deepEqual(failoverAllowed({ ...base, alive: 3, votes: 2 }), { ok: true });
  const lone = failoverAllowed({ ...base, alive: 1, votes: 1 });
  assert.equal(lone.ok, false);
  assert.match(lone.ok ? '' : lone.reason, /no quorum \(1 of 3 instances alive, 2 needed\)/);
  const oneVote = failoverAllowed({ ...base, alive: 3, votes: 1 });
  assert.match(oneVote.ok ? '' : oneVote.reason, /1 of 3 instances see the node down, 2 needed/);
  assert.deepEqual(failoverAllowed({ ...base, alive: 3, votes: 1, requireConsensus: false }), { ok: true });
  assert.deepEqual(failoverAllowed({ ...base, alive: 1, votes: 1, whenQuorumExists: false, requireConsensus: false }), { ok: true });
  assert.deepEqual(failoverAllowed({ ...base, total: 2, alive: 1, votes: 1, halfVotes: true }), { ok: true });
});
