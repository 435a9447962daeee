using System.Collections.Concurrent;
using System.Text.Json;
using Akka.Actor;
using Akka.Event;
using Akka.Persistence.Query;
using Akka.Persistence.Sql.Query;
using Akka.Streams;
using Akka.Streams.Dsl;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using Microsoft.Data.Sqlite;

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
    /// <summary>
    /// Ids the journal is known to hold, so that a look at one (the event streams look at a migration at each of its
    /// changes) does not query the journal: those not finished, and those started since the last list. A migration, once
    /// requested, is never unrequested. A finished one is dropped (its view is kept in <see cref="_finished"/>), so this
    /// stays about as large as what is in flight; without the unfinished ones a recovery of 1,000 took 2-3 s longer (one
    /// journal query per change event: bench control-plane).
    /// </summary>
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
    /// <summary>Migrations the current read found an event missing of (<see cref="RepairAsync"/>).</summary>
    private readonly HashSet<MigrationId> _gaps = [];
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

    /// <summary>The migrations not finished, as the journal has them now (read up to its end first).</summary>
    public async Task<IReadOnlyList<MigrationState>> UnfinishedAsync(CancellationToken ct = default)
    {
        await _catchUp.WaitAsync(ct);
        try
        {
            await CatchUpAsync(ct);
            return _unfinished.Values.Select(row => row.State).ToList();
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

    /// <summary>
    /// Folds the events journaled since the last call into the read table (the caller holds <see cref="_catchUp"/>).
    /// Not cancelled by the list that asked (a client gone): a fold must end before the next one begins, as both change
    /// the rows and the offset; the next list then has less to read.
    /// </summary>
    private async Task CatchUpAsync(CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ct.ThrowIfCancellationRequested();
        _store ??= await OpenAsync(views ?? MigrationViewOptions.InMemory);
        _gaps.Clear();
        await _journal.Value.CurrentAllEvents(Offset.Sequence(_offset))
            .Grouped(FoldBatch)
            .RunForeach(batch => Fold(_store, batch), _materializer.Value);
        if (_gaps.Count > 0) await RepairAsync(_store);
    }

    /// <summary>
    /// The read table as it was left, unless it cannot be read (rebuilt from the journal: it is only a view of it) or it is
    /// ahead of the journal (a journal restored from a backup or made anew under the same name: its events at or before
    /// the table's offset would be skipped, so the table is read again from the start).
    /// </summary>
    private async Task<MigrationViewStore> OpenAsync(MigrationViewOptions options)
    {
        _unfinished.Clear();
        MigrationViewStore? store = null;
        try
        {
            store = new MigrationViewStore(options);
            foreach (var row in store.Unfinished())
            {
                _unfinished[row.State.Id] = row;
                _known[row.State.Id] = 0;
            }
            _offset = store.Offset;
            if (_offset > 0 && !await JournalHoldsAsync(_offset, store.LastRead))
            {
                system.Log.Warning("Migrations list: its read table {File} is read up to journal ordering {Offset}, which the journal does not hold; reading the journal again from its start",
                    options.File, _offset);
                store.Clear();
                _unfinished.Clear();
                _offset = 0;
            }
            return store;
        }
        catch (Exception e) when (e is SqliteException or JsonException or InvalidDataException && options.File is not null)
        {
            store?.Dispose();
            system.Log.Warning(e, "Migrations list: its read table {File} cannot be read; it is made again from the journal", options.File);
            SqliteConnection.ClearAllPools();
            foreach (var file in new[] { options.File!, options.File + "-wal", options.File + "-shm" }) File.Delete(file);
            _unfinished.Clear();
            var fresh = new MigrationViewStore(options);
            _offset = fresh.Offset;
            return fresh;
        }
    }

    /// <summary>
    /// Whether the journal holds, at this ordering, the event read last (<see cref="EventKey"/>): a journal only grows, so
    /// the same event there means the same journal up to it (nothing is ever deleted from it).
    /// </summary>
    private async Task<bool> JournalHoldsAsync(long ordering, string? lastRead)
    {
        var at = await _journal.Value.CurrentAllEvents(Offset.Sequence(ordering - 1))
            .Take(1)
            .RunWith(Sink.Seq<EventEnvelope>(), _materializer.Value);
        return at.Count == 1 && at[0].Offset is Sequence { Value: var found } && found == ordering && EventKey(at[0]) == lastRead;
    }

    private static string EventKey(EventEnvelope envelope) => $"{envelope.PersistenceId}#{envelope.SequenceNr}";

    /// <summary>
    /// Migrations one of whose events the all-events read passed over (several writers on PostgreSQL: an event whose
    /// write committed after the read gave up waiting for it): each is read again whole from its own journal, so its row
    /// never folds later events onto a state that lacks one.
    /// </summary>
    private async Task RepairAsync(MigrationViewStore store)
    {
        var repaired = new List<MigrationRow>();
        foreach (var id in _gaps)
        {
            var events = await _journal.Value.CurrentEventsByPersistenceId(MigrationActor.PersistenceIdOf(id), 0, long.MaxValue)
                .RunWith(Sink.Seq<EventEnvelope>(), _materializer.Value);
            var row = new MigrationRow(MigrationState.Initial(id), 0);
            foreach (var envelope in events)
                if (envelope.Event is IMigrationEvent e && envelope.SequenceNr > row.SequenceNr)
                    row = new MigrationRow(MigrationState.Apply(row.State, e), envelope.SequenceNr);
            system.Log.Warning("Migrations list: migration {Migration} missed an event in the all-events read; read again from its own journal up to event {SequenceNr}",
                id, row.SequenceNr);
            repaired.Add(row);
        }
        store.Write(repaired, _offset, store.LastRead);
        foreach (var row in repaired)
        {
            if (row.State.Status.IsFinished) _unfinished.Remove(row.State.Id);
            else
            {
                _unfinished[row.State.Id] = row;
                _known[row.State.Id] = 0;
            }
        }
        _gaps.Clear();
    }

    /// <summary>Folds a batch of events into the rows they change and writes those with the ordering read up to.</summary>
    private void Fold(MigrationViewStore store, IEnumerable<EventEnvelope> batch)
    {
        var changed = new Dictionary<MigrationId, MigrationRow>();
        var offset = _offset;
        EventEnvelope? lastRead = null;
        foreach (var envelope in batch)
        {
            if (envelope.Offset is Sequence { Value: var ordering })
            {
                // the read journal's offset is exclusive; an event at or before the one read last was folded already
                if (ordering <= offset) continue;
                offset = ordering;
                lastRead = envelope;
            }
            if (envelope.Event is not IMigrationEvent migrationEvent
                || !envelope.PersistenceId.StartsWith(Prefix, StringComparison.Ordinal)
                || !MigrationId.TryParse(envelope.PersistenceId[Prefix.Length..], out var parsed))
                continue;
            var id = parsed.Value;
            var row = changed.GetValueOrDefault(id) ?? _unfinished.GetValueOrDefault(id) ?? store.Find(id)
                      ?? new MigrationRow(MigrationState.Initial(id), 0);
            // an event the row holds already (the table was written after the offset it starts from): never twice
            if (envelope.SequenceNr <= row.SequenceNr || _gaps.Contains(id)) continue;
            if (envelope.SequenceNr > row.SequenceNr + 1)
            {
                // one of its events was passed over: the row is read again whole once this read ends
                _gaps.Add(id);
                continue;
            }
            changed[id] = new MigrationRow(MigrationState.Apply(row.State, migrationEvent), envelope.SequenceNr);
        }
        if (offset == _offset) return;
        store.Write(changed.Values, offset, EventKey(lastRead!));
        _offset = offset;
        foreach (var (id, row) in changed)
        {
            if (row.State.Status.IsFinished)
            {
                _unfinished.Remove(id);
                _known.TryRemove(id, out _);
            }
            else
            {
                _unfinished[id] = row;
                _known[id] = 0;
            }
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
        var first = await _journal.Value.CurrentEventsByPersistenceId(MigrationActor.PersistenceIdOf(id), 0, long.MaxValue)
            .Take(1)
            .RunWith(Sink.Seq<EventEnvelope>(), _materializer.Value)
            .WaitAsync(ct);
        if (first.Count > 0) Remember(id);
        return first.Count > 0;
    }

    /// <summary>A migration whose start its saga accepted: its request is in the journal.</summary>
    public void Requested(MigrationId id) => Remember(id);

    /// <summary>
    /// A migration whose saga published a change: it exists. After a restart the sagas recover before anyone lists, and
    /// each of their changes is looked up by the event streams; without this every one queried the journal.
    /// </summary>
    public void Heard(MigrationId id)
    {
        if (_finished.ContainsKey(id)) return;
        Remember(id);
        // finished meanwhile (its final view came on another thread): that view answers for it
        if (_finished.ContainsKey(id)) _known.TryRemove(id, out _);
    }

    private void Remember(MigrationId id)
    {
        // a cache in front of the journal's lookup, bounded (an id not kept is looked up in the journal)
        if (_known.Count < KnownIdsKept) _known[id] = 0;
    }

    private const int KnownIdsKept = 100_000;

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
        _known.TryRemove(view.Id, out _);
        _finishedOrder.Enqueue(view.Id);
        // bounded: a Coordinator that runs for months does not keep every migration it ever showed
        while (_finished.Count > FinishedViewsKept && _finishedOrder.TryDequeue(out var oldest))
            _finished.TryRemove(oldest, out _);
    }
}
