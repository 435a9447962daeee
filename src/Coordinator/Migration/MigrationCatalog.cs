using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Persistence.Query;
using Akka.Persistence.Sql.Query;
using Akka.Streams;
using Akka.Streams.Dsl;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>
/// Every migration the journal knows, read back from the journal itself (the SQL read journal's persistence ids
/// and events): nothing to keep in step, it survives any restart, and no saga is woken to be listed. Each view
/// is the saga's state rebuilt by <see cref="MigrationState.Replay"/>, the same rules recovery uses, so it
/// matches what the saga persisted; a finished migration never changes again and is replayed only once.
/// </summary>
public sealed class MigrationCatalog(ActorSystem system)
{
    private const string Prefix = "migration-";
    private readonly ConcurrentDictionary<MigrationId, MigrationView> _finished = new();
    /// <summary>Ids the journal is known to hold: a migration, once requested, is never unrequested, so it is asked only once.</summary>
    private readonly ConcurrentDictionary<MigrationId, byte> _known = new();
    private readonly Lazy<IMaterializer> _materializer = new(() => system.Materializer(namePrefix: "migration-catalog"));
    private readonly Lazy<SqlReadJournal> _journal = new(() =>
        PersistenceQuery.Get(system).ReadJournalFor<SqlReadJournal>(SqlReadJournal.Identifier));

    /// <summary>The migrations, newest request first; with <paramref name="activeOnly"/>, those not finished.</summary>
    public async Task<IReadOnlyList<MigrationView>> ListAsync(bool activeOnly, CancellationToken ct = default)
    {
        var ids = await _journal.Value.CurrentPersistenceIds()
            .Where(id => id.StartsWith(Prefix, StringComparison.Ordinal))
            .RunWith(Sink.Seq<string>(), _materializer.Value);
        var views = new List<MigrationView>(ids.Count);
        foreach (var persistenceId in ids)
        {
            ct.ThrowIfCancellationRequested();
            if (!MigrationId.TryParse(persistenceId[Prefix.Length..], out var id)) continue;
            if (_finished.TryGetValue(id.Value, out var done))
            {
                if (!activeOnly) views.Add(done);
                continue;
            }
            var view = await ReplayAsync(id.Value, persistenceId);
            if (view is null) continue;
            if (view.Finished) _finished[id.Value] = view;
            if (!activeOnly || !view.Finished) views.Add(view);
        }
        return views
            .OrderByDescending(v => v.RequestedAt ?? DateTimeOffset.MinValue)
            .ThenBy(v => v.Id.ToString(), StringComparer.Ordinal)
            .ToList();
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
        if (first.Count > 0) _known[id] = 0;
        return first.Count > 0;
    }

    /// <summary>A migration whose start its saga accepted: its request is in the journal.</summary>
    public void Requested(MigrationId id) => _known[id] = 0;

    /// <summary>
    /// The view of a finished migration, which never changes again, once anyone read it: answered from here, a look at
    /// a finished migration does not wake its saga (a replay of its journal, and remember-entities' writes of its start and stop).
    /// </summary>
    public MigrationView? FinishedView(MigrationId id) => _finished.GetValueOrDefault(id);

    public void Finished(MigrationView view)
    {
        if (view.Finished) _finished[view.Id] = view;
    }

    private async Task<MigrationView?> ReplayAsync(MigrationId id, string persistenceId)
    {
        var state = await _journal.Value.CurrentEventsByPersistenceId(persistenceId, 0, long.MaxValue)
            .Select(envelope => envelope.Event)
            .RunAggregate(MigrationState.Initial(id), (s, e) => e is IMigrationEvent migrationEvent ? MigrationState.Apply(s, migrationEvent) : s,
                _materializer.Value);
        // A saga that refused its start persisted nothing; one with events always begins with its request.
        return state.Status is MigrationStatus.New ? null : MigrationViews.ViewOf(state, DateTimeOffset.UtcNow);
    }
}
