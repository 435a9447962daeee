using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Tests.Api;

/// <summary>
/// The node-local hub behind the event streams, on a one-node cluster: changes published on the migrations topic
/// reach the subscriptions that want them, bursts collapse to one entry per migration, and a disposed
/// subscription (a client that went away) hears nothing more.
/// </summary>
public sealed class EventStreamHubTests() : TestKit(Config, nameof(EventStreamHubTests))
{
    private static readonly Config Config = ConfigurationFactory.ParseString("""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
        akka.coordinated-shutdown.phases.cluster-exiting.timeout = 1s
        akka.actor.serialize-messages = on
        """).WithFallback(ProtocolSerialization.Hocon);

    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    private async Task<IActorRef> ClusterUpAsync()
    {
        var cluster = Cluster.Get(Sys);
        cluster.Join(cluster.SelfAddress);
        await AwaitConditionAsync(() => Task.FromResult(cluster.SelfMember.Status == MemberStatus.Up), Wait);
        return DistributedPubSub.Get(Sys).Mediator;
    }

    private static MigrationStatusChanged Change(MigrationId id, string status, bool finished = false) =>
        new(id, status, ValueList<DiskProgress>.Empty, DateTimeOffset.UtcNow, finished);

    [Fact]
    public async Task Changes_reach_the_subscriptions_that_follow_them_and_bursts_collapse()
    {
        var mediator = await ClusterUpAsync();
        var feed = new MigrationChangeFeed();
        var watched = MigrationId.New();
        var other = MigrationId.New();
        using var all = await feed.SubscribeAsync(Sys, only: null, CancellationToken.None);
        using var one = await feed.SubscribeAsync(Sys, watched, CancellationToken.None);

        foreach (var status in new[] { "queued", "running", "running" })
            mediator.Tell(new Publish(MigrationStatusChanged.Topic, Change(watched, status)));
        mediator.Tell(new Publish(MigrationStatusChanged.Topic, Change(other, "running")));
        // The hub is subscribed before SubscribeAsync returns: nothing published after it is lost.
        await AwaitAssertAsync(async () =>
        {
            using var limit = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
            var seen = await all.NextAsync(limit.Token);
            Assert.Contains(other, seen);
        }, Wait);
        using var oneLimit = new CancellationTokenSource(Wait);
        Assert.Equal([watched], await one.NextAsync(oneLimit.Token));
    }

    [Fact]
    public async Task A_migration_whose_saga_published_a_change_is_known_to_exist_without_a_read_of_the_journal()
    {
        // After a Coordinator restart the sagas recover before anyone lists, and the streams look up each of their
        // changes: the change itself says the migration exists. This system has no journal to read: a lookup that
        // went to it would fail.
        var mediator = await ClusterUpAsync();
        var catalog = new MigrationCatalog(Sys);
        var feed = new MigrationChangeFeed(catalog);
        var running = MigrationId.New();
        using var all = await feed.SubscribeAsync(Sys, only: null, CancellationToken.None);

        mediator.Tell(new Publish(MigrationStatusChanged.Topic, Change(running, "running")));

        using var limit = new CancellationTokenSource(Wait);
        Assert.Equal([running], await all.NextAsync(limit.Token));
        Assert.True(await catalog.ExistsAsync(running).WaitAsync(Wait));
    }

    [Fact]
    public async Task A_disposed_subscription_hears_nothing_more_while_the_others_still_do()
    {
        var mediator = await ClusterUpAsync();
        var feed = new MigrationChangeFeed();
        var id = MigrationId.New();
        var gone = await feed.SubscribeAsync(Sys, id, CancellationToken.None);
        using var staying = await feed.SubscribeAsync(Sys, id, CancellationToken.None);
        gone.Dispose();

        mediator.Tell(new Publish(MigrationStatusChanged.Topic, Change(id, "completed", finished: true)));

        using var limit = new CancellationTokenSource(Wait);
        Assert.Equal([id], await staying.NextAsync(limit.Token));
        // The staying one heard the change, so the hub handled it after the unregistration (one mailbox, in order).
        using var quiet = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => gone.NextAsync(quiet.Token));
    }
}
