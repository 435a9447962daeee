using System.Net;
using System.Net.Http.Json;
using System.Text.Json;

namespace LiveMigration.Cli.Local;

/// <summary>
/// A dead node comes back on its old address only once every running member has let go of its old incarnation.
/// A member still holding an association to the old UID redials the address when its 5 s gate reopens (or on its next
/// message); if that dial meets the new incarnation's own first connection, Akka.Remote 1.5 stops the old endpoint
/// mid-dial and leaves the dialled connection open with nobody writing on it, and the new node reads only that one:
/// the member's messages to it are dropped for good while its messages to the member arrive (issue 10: under load, a
/// restarted host that never gets an InitJoinAck, or joins and is then unreachable from the Coordinator only).
/// A member lets go of the old UID when it sees that incarnation removed (it quarantines the UID, stopping its endpoints),
/// so the old incarnation is downed (its process is gone: lsm checked its pid) and removed first.
/// </summary>
public static class OldIncarnation
{
    private static readonly TimeSpan DownRepeat = TimeSpan.FromSeconds(3);

    /// <summary>
    /// Downs the members at the dead nodes' addresses (<paramref name="deadNodes"/>: name → address; the caller has checked
    /// that their processes no longer run) through the Coordinator's API, all at once so that none blocks the removal of
    /// another, and returns once the Coordinator lists none of them and every reachable member has seen that view: none of
    /// them holds an association to an old incarnation any more.
    /// </summary>
    /// <param name="coordinatorRuns">False once the Coordinator's process is gone: then nobody is left to ask, and the caller's
    /// next up restarts it too.</param>
    public static async Task RemoveAsync(LocalCluster cluster, IReadOnlyDictionary<string, string> deadNodes, Func<bool> coordinatorRuns, TimeSpan limit,
        Action<string>? report, CancellationToken ct)
    {
        if (deadNodes.Count == 0) return;
        using var http = cluster.NewApiClient(TimeSpan.FromSeconds(5));
        var deadline = DateTime.UtcNow + limit;
        var downRequestedAt = new Dictionary<string, DateTime>();
        var waitingFor = "the Coordinator's API";
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            if (!coordinatorRuns())
                throw new TimeoutException($"the Coordinator exited before the old incarnations of {string.Join(", ", deadNodes.Keys)} were out of the cluster");
            try
            {
                var view = await http.GetFromJsonAsync<JsonElement>($"{cluster.ApiUrl}/api/cluster", ct);
                var members = view.GetProperty("members").EnumerateArray()
                    .ToDictionary(m => m.GetProperty("address").GetString()!, m => (Status: m.GetProperty("status").GetString(), Reachable: m.GetProperty("reachable").GetBoolean()));
                var listed = deadNodes.Where(d => members.ContainsKey(d.Value)).ToList();
                // a Coordinator built before seenBy was in its view: its own view is all there is to go by
                var seenBy = view.TryGetProperty("seenBy", out var seen) ? seen.EnumerateArray().Select(a => a.GetString()).ToHashSet() : null;
                // members on their way out (down, exiting) may stop taking gossip: they are no peer of the new incarnation
                var notSeen = members.Where(m => m.Value.Reachable && m.Value.Status is not ("down" or "exiting") && seenBy?.Contains(m.Key) == false)
                    .Select(m => m.Key).ToList();
                // a Coordinator outside the cluster (starting, or downed itself) has a view that proves nothing
                if (!members.TryGetValue(view.GetProperty("self").GetString()!, out var self) || self.Status != "up")
                    waitingFor = "the Coordinator to be Up in the cluster";
                else if (listed.Count > 0)
                {
                    waitingFor = $"{string.Join(", ", listed.Select(d => $"{d.Value} ({members[d.Value].Status})"))} to be removed from the cluster";
                    foreach (var (node, address) in listed.Where(d => members[d.Value].Status != "down"
                                                                      && DateTime.UtcNow - downRequestedAt.GetValueOrDefault(d.Key) > DownRepeat))
                    {
                        using var down = await http.PostAsJsonAsync($"{cluster.ApiUrl}/api/cluster/down", new { address }, ct);
                        // 404: it was removed meanwhile (by the resolver, or an earlier request), which is what is waited for
                        if (down.IsSuccessStatusCode || down.StatusCode == HttpStatusCode.NotFound) downRequestedAt[node] = DateTime.UtcNow;
                        else waitingFor = $"the Coordinator to down {address} (it answered {(int)down.StatusCode}: {await down.Content.ReadAsStringAsync(ct)})";
                    }
                }
                else if (notSeen.Count > 0)
                    waitingFor = $"every member to see the removal (not yet: {string.Join(", ", notSeen)})";
                else
                {
                    foreach (var (node, address) in deadNodes)
                        report?.Invoke($"{node}: its old incarnation {address} is out of the cluster{(downRequestedAt.ContainsKey(node) ? " (downed: its process is gone)" : "")}");
                    return;
                }
            }
            catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException
                                          || e is TaskCanceledException && !ct.IsCancellationRequested) { }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"the old incarnations of {string.Join(", ", deadNodes.Keys)} were not out of the cluster within {limit.TotalSeconds:0} s, " +
                                           $"so they were not started again: waited for {waitingFor}");
            await Task.Delay(250, ct);
        }
    }
}
