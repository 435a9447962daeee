using System.Collections.Immutable;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Audit;

/// <summary>
/// The audit trail as the API pages it: the newest <see cref="KeepInMemory"/> recorded requests with their outcomes,
/// numbered from 1 in the order they were recorded. Pure: <see cref="Decide(RecordAuditRequest)"/> says what to
/// journal, <see cref="Apply"/> folds a journaled event in, so recovery rebuilds it from the events alone.
/// </summary>
public sealed record AuditState(long LastNumber, ImmutableSortedDictionary<long, AuditEntry> Entries,
    ImmutableDictionary<string, long> NumberByRequest, int KeepInMemory)
{
    public const int MaxPage = 1000;

    public static AuditState Empty(int keepInMemory) =>
        new(0, ImmutableSortedDictionary<long, AuditEntry>.Empty, ImmutableDictionary<string, long>.Empty, keepInMemory);

    public AuditSnapshot Snapshot() => new(LastNumber, [.. Entries.Values]);

    public static AuditState FromSnapshot(AuditSnapshot snapshot, int keepInMemory) =>
        new(snapshot.LastNumber,
            snapshot.Entries.TakeLast(keepInMemory).ToImmutableSortedDictionary(e => e.Number, e => e),
            snapshot.Entries.TakeLast(keepInMemory).ToImmutableDictionary(e => e.RequestId, e => e.Number),
            keepInMemory);

    /// <summary>A request already recorded (the API asking again after a lost receipt) is not recorded twice.</summary>
    public AuditRequestRecorded? Decide(RecordAuditRequest request) =>
        NumberByRequest.ContainsKey(request.RequestId)
            ? null
            : new AuditRequestRecorded(request.RequestId, request.At, request.Role, request.Client, request.Method, request.Path,
                request.Body, request.BodyTruncated);

    /// <summary>An outcome is recorded once, for a request the trail holds; a repeat or a stray one is nothing new.</summary>
    public AuditOutcomeRecorded? Decide(RecordAuditOutcome outcome) =>
        NumberByRequest.TryGetValue(outcome.RequestId, out var number) && Entries[number].Status is null
            ? new AuditOutcomeRecorded(outcome.RequestId, outcome.At, outcome.Status, outcome.ErrorCode)
            : null;

    public AuditState Apply(IAuditEvent change) => change switch
    {
        AuditRequestRecorded r => Added(new AuditEntry(LastNumber + 1, r.RequestId, r.At, r.Role, r.Client, r.Method, r.Path, r.Body,
            r.BodyTruncated, AnsweredAt: null, Status: null, ErrorCode: null)),
        AuditOutcomeRecorded o when NumberByRequest.TryGetValue(o.RequestId, out var number) =>
            this with { Entries = Entries.SetItem(number, Entries[number] with { AnsweredAt = o.At, Status = o.Status, ErrorCode = o.ErrorCode }) },
        // the outcome of a request older than the entries kept in memory
        _ => this,
    };

    private AuditState Added(AuditEntry entry)
    {
        var entries = Entries.Add(entry.Number, entry);
        var numbers = NumberByRequest.SetItem(entry.RequestId, entry.Number);
        if (entries.Count > KeepInMemory)
        {
            var oldest = entries.First().Value;
            entries = entries.Remove(oldest.Number);
            numbers = numbers.Remove(oldest.RequestId);
        }
        return this with { LastNumber = entry.Number, Entries = entries, NumberByRequest = numbers };
    }

    /// <summary>Newest first: requests numbered below <c>Before</c>, recorded at or after <c>Since</c>, at most <c>Limit</c>.</summary>
    public AuditEntries Page(GetAuditEntries query)
    {
        var limit = Math.Clamp(query.Limit, 1, MaxPage);
        var page = new List<AuditEntry>(Math.Min(limit, Entries.Count));
        // One more than asked tells whether an older page exists.
        foreach (var entry in Entries.Values.Reverse())
        {
            if (query.Before is { } before && entry.Number >= before) continue;
            if (query.Since is { } since && entry.At < since) break;
            if (page.Count == limit) return new AuditEntries([.. page], page[^1].Number);
            page.Add(entry);
        }
        return new AuditEntries([.. page], null);
    }
}
