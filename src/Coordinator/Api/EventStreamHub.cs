using LiveMigration.Coordinator.Migration;
using System.Threading.Channels;
using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Api;

/// <summary>
/// The migrations that changed since a reader last looked, for one event-stream connection. Only ids are kept:
/// the reader asks the saga for the whole state, so a burst of progress messages for one migration becomes one
/// event, and a slow client holds at most one entry per migration however long it stalls.
/// </summary>
public sealed class MigrationChangeSubscription : IDisposable
{
    private readonly object _gate = new();
    private readonly HashSet<MigrationId> _changed = [];
    // Capacity 1, extra signals dropped: "something changed" needs saying once until the reader takes it.
    private readonly Channel<bool> _signal = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
    private readonly IActorRef _hub;

    internal MigrationChangeSubscription(IActorRef hub, MigrationId? only)
    {
        _hub = hub;
        Only = only;
    }

    /// <summary>The one migration this subscription follows, or null for all of them.</summary>
    public MigrationId? Only { get; }

    internal void Offer(MigrationStatusChanged changed)
    {
        if (Only is { } only && only != changed.MigrationId) return;
        lock (_gate) _changed.Add(changed.MigrationId);
        _signal.Writer.TryWrite(true);
    }

    /// <summary>Waits until at least one migration changed, then returns every migration that changed meanwhile.</summary>
    public async Task<IReadOnlyList<MigrationId>> NextAsync(CancellationToken ct)
    {
        await _signal.Reader.ReadAsync(ct);
        lock (_gate)
        {
            var changed = _changed.ToList();
            _changed.Clear();
            return changed;
        }
    }

    public void Dispose() => _hub.Tell(new MigrationEventHub.Unregister(this));
}

/// <summary>
/// One per Coordinator node: subscribed to <see cref="MigrationStatusChanged.Topic"/> on DistributedPubSub and
/// fanning each change out to the node's open event streams. Registrations wait until the topic subscription is
/// acknowledged, so a stream that got its first state after registering misses no later change.
/// </summary>
public sealed class MigrationEventHub : ReceiveActor, IWithStash
{
    // Node-local only: they carry the subscription object itself, never cross the wire.
    public sealed record Register(MigrationChangeSubscription Subscription) : INoSerializationVerificationNeeded;
    public sealed record Registered : INoSerializationVerificationNeeded;
    public sealed record Unregister(MigrationChangeSubscription Subscription) : INoSerializationVerificationNeeded;

    private readonly HashSet<MigrationChangeSubscription> _subscriptions = [];
    private readonly MigrationCatalog? _catalog;

    /// <param name="catalog">Told each migration heard from, and each finished one's final view first, so the streams' reads of it
    /// neither query the journal nor wake a saga.</param>
    public MigrationEventHub(MigrationCatalog? catalog = null)
    {
        _catalog = catalog;
        Receive<SubscribeAck>(_ =>
        {
            Become(Active);
            Stash.UnstashAll();
        });
        Receive<Register>(_ => Stash.Stash());
        Receive<Unregister>(u => _subscriptions.Remove(u.Subscription));
        Receive<MigrationStatusChanged>(_ => { });
    }

    public IStash Stash { get; set; } = null!;

    public static Props Props(MigrationCatalog? catalog = null) => Akka.Actor.Props.Create(() => new MigrationEventHub(catalog));

    protected override void PreStart() =>
        DistributedPubSub.Get(Context.System).Mediator.Tell(new Subscribe(MigrationStatusChanged.Topic, Self));

    private void Active()
    {
        Receive<MigrationStatusChanged>(changed =>
        {
            if (changed.FinalView is { } final) _catalog?.Finished(final);
            // its saga said so: the streams' look at it then needs no query of the journal for whether it exists
            else _catalog?.Heard(changed.MigrationId);
            foreach (var subscription in _subscriptions) subscription.Offer(changed);
        });
        Receive<Register>(r =>
        {
            _subscriptions.Add(r.Subscription);
            Sender.Tell(new Registered());
        });
        Receive<Unregister>(u => _subscriptions.Remove(u.Subscription));
        Receive<SubscribeAck>(_ => { });
    }
}

/// <summary>Starts the node's <see cref="MigrationEventHub"/> on first use and hands out subscriptions to it.</summary>
public sealed class MigrationChangeFeed(MigrationCatalog? catalog = null)
{
    private static readonly TimeSpan RegisterTimeout = TimeSpan.FromSeconds(10);
    private readonly object _gate = new();
    private IActorRef? _hub;

    public async Task<MigrationChangeSubscription> SubscribeAsync(ActorSystem system, MigrationId? only, CancellationToken ct)
    {
        var hub = HubOf(system);
        var subscription = new MigrationChangeSubscription(hub, only);
        try
        {
            await hub.Ask<MigrationEventHub.Registered>(new MigrationEventHub.Register(subscription), RegisterTimeout, ct);
        }
        catch
        {
            // The client went away (or the hub was slow): a registration that lands later must not stay behind.
            subscription.Dispose();
            throw;
        }
        return subscription;
    }

    private IActorRef HubOf(ActorSystem system)
    {
        lock (_gate)
            return _hub ??= system.ActorOf(MigrationEventHub.Props(catalog), "migration-event-hub");
    }
}
