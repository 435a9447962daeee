using Akka.Actor;
using Akka.Hosting;
using Akka.TestKit;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace LiveMigration.Coordinator.Tests.Actors;

/// <summary>
/// One Coordinator-like ActorSystem wired by the real hosting extensions: journal on SQLite files in the data
/// directory, or on PostgreSQL when a connection string is given; the protocol serializer bound. Every local
/// send goes through serialization (<c>serialize-messages = on</c>), as it would between two Coordinators, so a
/// message without a binding (or one that does not round-trip) shows here.
/// </summary>
public sealed class ActorNode : IAsyncDisposable
{
    private readonly IHost _host;
    public ActorSystem System { get; }
    public Akka.TestKit.Xunit2.TestKit Kit { get; }

    private ActorNode(IHost host)
    {
        _host = host;
        System = host.Services.GetRequiredService<ActorSystem>();
        Kit = new Akka.TestKit.Xunit2.TestKit(System);
    }

    /// <param name="serializeMessages">Off for tests of the journal's all-events query: the SQL journal tracks its writes with a
    /// local message that holds a Task (WriteFinished), which cannot round-trip, and that query waits for the writes it tracks.</param>
    /// <param name="hocon">Settings over the journal's (added last).</param>
    public static async Task<ActorNode> StartAsync(string dataDirectory, string? postgresConnectionString = null, bool serializeMessages = true,
        string? hocon = null)
    {
        var host = new HostBuilder()
            .ConfigureServices(services => services.AddAkka("coordinator-test", builder => builder
                .AddHocon($"""
                    akka.loglevel = INFO
                    akka.actor.serialize-messages = {(serializeMessages ? "on" : "off")}
                    """, HoconAddMode.Prepend)
                .WithProtocolSerializer()
                .WithMigrationJournal(new JournalOptions(dataDirectory, postgresConnectionString))
                .AddHocon(hocon ?? "", HoconAddMode.Prepend)))
            .Build();
        await host.StartAsync();
        return new ActorNode(host);
    }

    /// <summary>A migration actor whose SPM and HSM are two tagging actors in front of one test probe, on the given host id.</summary>
    /// <param name="located">What the inventory answers for the VM's host when <paramref name="host"/> (this node's directory) is null.</param>
    /// <param name="locateFailures">How many of the saga's first lookups of its VM's host get no answer (the ask times out).</param>
    public HostProbes Migration(MigrationId id, IActorRef admission, MigrationActorSettings settings, string? host = "host-1", string? located = null,
        int locateFailures = 0)
    {
        var received = Kit.CreateTestProbe();
        var hosts = new HostProbes(received,
            System.ActorOf(Props.Create(() => new RoleTagger(HostRole.Spm, received.Ref))),
            System.ActorOf(Props.Create(() => new RoleTagger(HostRole.Hsm, received.Ref))),
            host, located, locateFailures);
        hosts.Saga = System.ActorOf(MigrationActor.Props(id, hosts, admission, settings));
        return hosts;
    }

    public async ValueTask DisposeAsync()
    {
        await _host.StopAsync();
        _host.Dispose();
    }
}

/// <summary>A step as a host received it, and when (a <see cref="System.Diagnostics.Stopwatch"/> timestamp taken on arrival,
/// so a test measuring the gap between two sends is not fooled by its own thread running late).</summary>
public sealed record StepReceived(HostRole By, ExecuteStep Step, long ArrivedAt);

/// <summary>Plays a host: tells the probe which role received each command.</summary>
public sealed class RoleTagger : ReceiveActor
{
    public RoleTagger(HostRole role, IActorRef probe) => Receive<ExecuteStep>(step => probe.Tell(new StepReceived(role, step, System.Diagnostics.Stopwatch.GetTimestamp())));
}

/// <summary>The SPM and HSM of one migration; what they receive arrives at <see cref="Received"/>.</summary>
public sealed class HostProbes(TestProbe received, IActorRef spm, IActorRef hsm, string? host, string? located = null, int locateFailures = 0) : IMigrationHosts
{
    public TestProbe Received { get; } = received;
    public IActorRef Saga { get; set; } = ActorRefs.Nobody;
    public IActorRef Spm => spm;
    public IActorRef? HsmFor(VmId vm) => hsm;
    public string? HostOf(VmId vm) => host;
    private int _locateFailuresLeft = locateFailures;

    public Task<string?> LocateAsync(VmId vm) => Interlocked.Decrement(ref _locateFailuresLeft) >= 0
        ? Task.FromException<string?>(new AskTimeoutException("the inventory did not answer (test)"))
        : Task.FromResult(host ?? located);

    /// <summary>The next step sent to either host; asserts it went to the host its role names.</summary>
    public ExecuteStep NextStep(TimeSpan? within = null) => NextArrival(within).Step;

    /// <summary>The next step sent to either host with its arrival time; asserts it went to the host its role names.</summary>
    public StepReceived NextArrival(TimeSpan? within = null)
    {
        var received = Received.ExpectMsg<StepReceived>(within ?? TimeSpan.FromSeconds(3));
        Assert.Equal(MigrationPlan.RoleOf(received.Step.Operation.Step), received.By);
        return received;
    }

    public void NoStep(TimeSpan during) => Received.ExpectNoMsg(during);

    public void Succeed(ExecuteStep step) => Saga.Tell(new OperationSucceeded(step.Operation, new StepOutcome(step.Disk.SizeBytes)), HostFor(step));

    public void Fail(ExecuteStep step, string code, bool transient) =>
        Saga.Tell(new OperationFailed(step.Operation, code, $"injected {code}", transient), HostFor(step));

    private IActorRef HostFor(ExecuteStep step) => MigrationPlan.RoleOf(step.Operation.Step) == HostRole.Spm ? spm : hsm;

    /// <summary>Answers every step of a one-disk migration with success, from <paramref name="first"/> on; returns the steps answered.</summary>
    public List<MigrationStep> SucceedAll(ExecuteStep? first = null)
    {
        var steps = new List<MigrationStep>();
        var step = first ?? NextStep();
        var last = MigrationPlan.ForwardSteps(step.Strategy, deleteSource: true)[^1];
        while (true)
        {
            steps.Add(step.Operation.Step);
            Succeed(step);
            if (step.Operation.Step == last) return steps;
            step = NextStep();
        }
    }
}
