using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Hosting;
using Akka.Hosting;
using Akka.Remote.Hosting;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Coordinator.Tests.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace LiveMigration.Coordinator.Tests.Actors;

/// <summary>The hosting extensions together: a one-node cluster with the migration region and the admission singleton on SQLite.</summary>
public sealed class MigrationShardingTests : IAsyncLifetime
{
    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), $"lsm-shard-{Guid.NewGuid():N}");
    private IHost? _host;

    [Fact]
    public async Task A_migration_started_through_the_region_completes_with_host_replies_routed_by_operation_id()
    {
        var hosts = new RegionHosts();
        _host = new HostBuilder()
            .ConfigureServices(services => services.AddAkka("coordinator-shard-test", builder => builder
                .AddHocon("""
                    akka.loglevel = INFO
                    akka.actor.serialize-messages = on
                    akka.cluster { gossip-interval = 200ms, leader-actions-interval = 200ms, periodic-tasks-initial-delay = 100ms }
                    akka.cluster.sharding { retry-interval = 200ms, shard-start-timeout = 2s, waiting-for-state-timeout = 1s, updating-state-timeout = 1s }
                    akka.cluster.singleton.hand-over-retry-interval = 200ms
                    akka.cluster.singleton-proxy.singleton-identification-interval = 200ms
                    akka.coordinated-shutdown.phases.cluster-exiting.timeout = 1s
                    """, HoconAddMode.Prepend)
                .WithRemoting("127.0.0.1", 0)
                .WithClustering(new ClusterOptions { Roles = ["coordinator"] })
                .WithProtocolSerializer()
                .WithMigrationJournal(new JournalOptions(_dataDirectory))
                .WithMigrationSharding((_, _) => hosts, new MigrationShardingOptions { ShardCount = 10 })
                .AddStartup((system, _) => Cluster.Get(system).Join(Cluster.Get(system).SelfAddress))))
            .Build();
        await _host.StartAsync();
        var system = _host.Services.GetRequiredService<ActorSystem>();
        var kit = new Akka.TestKit.Xunit2.TestKit(system);
        var received = kit.CreateTestProbe();
        hosts.Attach(system, received.Ref);
        var region = _host.Services.GetRequiredService<IRequiredActor<MigrationRegion>>().ActorRef;

        var saga = new SagaDriver();
        region.Tell(new StartMigration(saga.Id, saga.Request(), saga.Facts()), kit.TestActor);
        kit.ExpectMsg<MigrationCommandAccepted>(TimeSpan.FromSeconds(15));

        var steps = new List<MigrationStep>();
        var last = MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, deleteSource: true)[^1];
        while (steps.LastOrDefault() != last)
        {
            var step = received.ExpectMsg<StepReceived>(TimeSpan.FromSeconds(20)).Step;
            steps.Add(step.Operation.Step);
            // straight to the region: the extractor finds the migration from the operation id
            region.Tell(new OperationSucceeded(step.Operation, new StepOutcome(step.Disk.SizeBytes)));
        }

        Assert.Equal(MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, deleteSource: true), steps);
        // finished entities passivate; a query brings the migration back from its journal
        region.Tell(new GetMigrationState(saga.Id), kit.TestActor);
        var reply = kit.ExpectMsg<MigrationStateReply>(TimeSpan.FromSeconds(20));
        Assert.Equal("completed", reply.View.Status);
        Assert.True(reply.View.Finished);
    }

    /// <summary>SPM and HSM as tagging actors in front of the test's probe, created once the system runs.</summary>
    private sealed class RegionHosts : IMigrationHosts
    {
        private IActorRef _spm = ActorRefs.Nobody;
        private IActorRef _hsm = ActorRefs.Nobody;

        public void Attach(ActorSystem system, IActorRef probe)
        {
            _spm = system.ActorOf(Props.Create(() => new RoleTagger(HostRole.Spm, probe)));
            _hsm = system.ActorOf(Props.Create(() => new RoleTagger(HostRole.Hsm, probe)));
        }

        public IActorRef Spm => _spm;
        public IActorRef? HsmFor(Shared.Model.VmId vm) => _hsm;
        public string? HostOf(Shared.Model.VmId vm) => "host-1";
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_host is not null)
        {
            await _host.StopAsync();
            _host.Dispose();
        }
        if (Directory.Exists(_dataDirectory))
            Directory.Delete(_dataDirectory, recursive: true);
    }
}
