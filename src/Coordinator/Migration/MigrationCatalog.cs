using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Persistence.Query;
using Akka.Persistence.Sql.Query;
using Akka.Streams;
using Akka.Streams.Dsl;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>One page of the migrations, newest request first: <see cref="Total"/> of them match the filter.</summary>
public sealed record MigrationPage(IReadOnlyList<MigrationView> Migrations, int Total, int Offset, int Limit);

/// <summary>
/// Every migration the journal knows, read back from the journal itself: a projection of the journal's events in their
/// global order (the SQL read journal's ordering), folded with <see cref="MigrationState.Apply"/>, the same rules recovery
/// uses, so a view matches what the saga persisted, and no saga is woken to be listed. Each list first reads only the
/// events journaled since the last one (from its offset), so a start the API accepted is listed at once, and a list
/// costs the new events plus the page, not a replay per migration. The projection is a read table
/// (<see cref="MigrationViewStore"/>) written with its offset: a Coordinator that starts again reads on from there, and
/// only the migrations not finished are held in memory (a Coordinator that ran for months held every one it ever saw,
/// and read the whole journal again at each start).
/// </summary>
public sealed class MigrationCatalog(ActorSystem system, MigrationViewOptions? views = null) : IDisposable
{
    public const int DefaultPageSize = 500;
    public const int MaxPageSize = 5000;

    private const string Prefix = "migration-";
    /// <summary>How many finished views are kept (the newest to finish): a look at an older one asks its saga, as before it was read once.</summary>
    public const int FinishedViewsKept = 10_000;

    private readonly ConcurrentDictionary<MigrationId, MigrationView> _finished = new();
    /// <summary>The order <see cref="_finished"/> was filled in, to forget the oldest first.</summary>
    private readonly ConcurrentQueue<MigrationId> _finishedOrder = new();
    /// <summary>Ids the journal holds that the read table may not have yet (started since the last list): a migration, once requested, is never unrequested.</summary>
    private readonly ConcurrentDictionary<MigrationId, byte> _known = new();
    private readonly Lazy<IMaterializer> _materializer = new(() => system.Materializer(namePrefix: "migration-catalog"));
    private readonly Lazy<SqlReadJournal> _journal = new(() =>
        PersistenceQuery.Get(system).ReadJournalFor<SqlReadJournal>(SqlReadJournal.Identifier));

    /// <summary>How many events are folded and written at a time: a first read of a long journal does not hold it all.</summary>
    private const int FoldBatch = 2_000;

    /// <summary>
    /// The projection: its read table, the migrations not finished (as the table has them, kept to fold into without a
    /// read), and the journal ordering read up to. Opened at the first list; guarded by <see cref="_catchUp"/>.
    /// </summary>
    private MigrationViewStore? _store;
    private readonly Dictionary<MigrationId, MigrationRow> _unfinished = new();
    private long _offset;
    private bool _disposed;
    private readonly SemaphoreSlim _catchUp = new(1, 1);

    /// <summary>The migrations, newest request first; with <paramref name="activeOnly"/>, those not finished.</summary>
    public async Task<IReadOnlyList<MigrationView>> ListAsync(bool activeOnly, CancellationToken ct = default) =>
        (await PageAsync(activeOnly, 0, int.MaxValue, ct)).Migrations;

    /// <summary>A status's kind for <see cref="MigrationStatusKinds"/>: "running", "failed" (whatever its code) …</summary>
    public static string KindOf(MigrationStatus status) => status.GetType().Name.ToLowerInvariant();

    /// <summary>
    /// <paramref name="limit"/> migrations from the <paramref name="offset"/>-th on, newest request first (ties by id, so pages
    /// do not overlap); with <paramref name="activeOnly"/>, only those not finished; with <paramref name="vm"/>, only that VM's;
    /// with <paramref name="status"/>, only those of that kind (<see cref="MigrationStatusKinds"/>).
    /// </summary>
    public async Task<MigrationPage> PageAsync(bool activeOnly, int offset, int limit, CancellationToken ct = default, VmId? vm = null, string? status = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limit);
        await _catchUp.WaitAsync(ct);
        try
        {
            await CatchUpAsync(ct);
            var now = DateTimeOffset.UtcNow;
            var (entries, total) = _store!.Page(activeOnly, vm, status, offset, limit);
            var page = entries.Select(e => ViewOf(e, now)).ToList();
            return new MigrationPage(page, total, offset, limit);
        }
        finally
        {
            _catchUp.Release();
        }
    }

    /// <summary>
    /// A row's view: an unfinished one from its state in memory, a finished one from the views kept (it never changes
    /// again), else read from the row and kept: a page of the newest is not a hundred reads of JSON at every refresh.
    /// </summary>
    private MigrationView ViewOf(MigrationPageEntry entry, DateTimeOffset now)
    {
        if (_unfinished.TryGetValue(entry.Id, out var row)) return MigrationViews.ViewOf(row.State, now);
        if (_finished.TryGetValue(entry.Id, out var finished)) return finished;
        var view = MigrationViews.ViewOf(MigrationViewStore.StateOf(entry.State), now);
        Finished(view);
        return view;
    }

    /// <summary>Folds the events journaled since the last call into the read table (the caller holds <see cref="_catchUp"/>).</summary>
    private async Task CatchUpAsync(CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_store is null)
        {
            var store = new MigrationViewStore(views ?? MigrationViewOptions.InMemory);
            foreach (var row in store.Unfinished()) _unfinished[row.State.Id] = row;
            _offset = store.Offset;
            _store = store;
        }
        await _journal.Value.CurrentAllEvents(Offset.Sequence(_offset))
            .Grouped(FoldBatch)
            .RunForeach(batch => Fold(_store, batch), _materializer.Value)
            .WaitAsync(ct);
    }

    /// <summary>Folds a batch of events into the rows they change and writes those with the ordering read up to.</summary>
    private void Fold(MigrationViewStore store, IEnumerable<EventEnvelope> batch)
    {
        var changed = new Dictionary<MigrationId, MigrationRow>();
        var offset = _offset;
        foreach (var envelope in batch)
        {
            if (envelope.Offset is Sequence { Value: var ordering })
            {
                // the read journal's offset is exclusive; an event at or before the one read last was folded already
                if (ordering <= offset) continue;
                offset = ordering;
            }
            if (envelope.Event is not IMigrationEvent migrationEvent
                || !envelope.PersistenceId.StartsWith(Prefix, StringComparison.Ordinal)
                || !MigrationId.TryParse(envelope.PersistenceId[Prefix.Length..], out var parsed))
                continue;
            var id = parsed.Value;
            var row = changed.GetValueOrDefault(id) ?? _unfinished.GetValueOrDefault(id) ?? store.Find(id)
                      ?? new MigrationRow(MigrationState.Initial(id), 0);
            // an event the row holds already (the table was written after the offset it starts from): never twice
            if (envelope.SequenceNr <= row.SequenceNr) continue;
            changed[id] = new MigrationRow(MigrationState.Apply(row.State, migrationEvent), envelope.SequenceNr);
        }
        if (offset == _offset) return;
        store.Write(changed.Values, offset);
        _offset = offset;
        foreach (var (id, row) in changed)
        {
            if (row.State.Status.IsFinished) _unfinished.Remove(id);
            else _unfinished[id] = row;
            _known.TryRemove(id, out _);
        }
    }

    /// <summary>
    /// Whether the journal holds a migration with this id (its first event is its request, persisted before the start
    /// is answered). Asked before the saga's shard is: a lookup of an id that names nothing would otherwise wake an
    /// entity, which remember-entities journals as started and stopped, so unknown ids would grow the journal.
    /// </summary>
    public async Task<bool> ExistsAsync(MigrationId id, CancellationToken ct = default)
    {
        if (_known.ContainsKey(id) || _finished.ContainsKey(id)) return true;
        if (await InReadTableAsync(id, ct)) return true;
        var first = await _journal.Value.CurrentEventsByPersistenceId(MigrationActor.PersistenceIdOf(id), 0, long.MaxValue)
            .Take(1)
            .RunWith(Sink.Seq<EventEnvelope>(), _materializer.Value)
            .WaitAsync(ct);
        if (first.Count > 0) _known[id] = 0;
        return first.Count > 0;
    }

    private async Task<bool> InReadTableAsync(MigrationId id, CancellationToken ct)
    {
        await _catchUp.WaitAsync(ct);
        try
        {
            return _unfinished.ContainsKey(id) || _store?.Contains(id) == true;
        }
        finally
        {
            _catchUp.Release();
        }
    }

    /// <summary>A migration whose start its saga accepted: its request is in the journal.</summary>
    public void Requested(MigrationId id) => _known[id] = 0;

    /// <summary>
    /// The view of a finished migration, which never changes again, once anyone read it: answered from here, a look at
    /// a finished migration does not wake its saga (a replay of its journal, and remember-entities' writes of its start and stop).
    /// </summary>
    public MigrationView? FinishedView(MigrationId id) => _finished.GetValueOrDefault(id);

    /// <summary>Closes the read table after a list in progress (which holds it); one that does not end soon is left to the process's end.</summary>
    public void Dispose()
    {
        if (!_catchUp.Wait(TimeSpan.FromSeconds(5))) return;
        _disposed = true;
        _store?.Dispose();
        _store = null;
        _catchUp.Release();
    }

    public void Finished(MigrationView view)
    {
        if (!view.Finished || !_finished.TryAdd(view.Id, view)) return;
        _finishedOrder.Enqueue(view.Id);
        // bounded: a Coordinator that runs for months does not keep every migration it ever showed
        while (_finished.Count > FinishedViewsKept && _finishedOrder.TryDequeue(out var oldest))
            _finished.TryRemove(oldest, out _);
    }
}
