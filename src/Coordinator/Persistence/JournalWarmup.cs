using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using Akka.Persistence;
using Microsoft.Extensions.Hosting;

namespace LiveMigration.Coordinator.Persistence;

/// <summary>
/// Recovers a persistence id that holds nothing once, as the Coordinator starts, so the journal and snapshot plugins
/// are started and connected (the Npgsql pool, linq2db's mappings, the tables' check) before a shard of this node needs
/// its remember-entities store. Cold, that first recovery took 5–9 s on a loaded 2-core machine with PostgreSQL, longer
/// than sharding's <c>waiting-for-state-timeout</c>: a shard allocated to a Coordinator that had just joined gave up
/// loading its entity ids, stopped for backoff and dropped the StartMigration it was created for (the API answered 503).
/// It persists nothing and stops once recovered; <see cref="JournalWarmupStatus"/> tells who waits for it.
/// </summary>
public sealed class JournalWarmup : ReceivePersistentActor
{
    public const string WarmupPersistenceId = "lsm-journal-warmup";
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    public static Props Props() => Akka.Actor.Props.Create(() => new JournalWarmup());

    public JournalWarmup()
    {
        Recover<RecoveryCompleted>(_ =>
        {
            Context.GetLogger().Info("Journal and snapshot store warmed up in {ElapsedMs} ms", _clock.ElapsedMilliseconds);
            JournalWarmupStatus.Get(Context.System).Done.TrySetResult();
            Context.Stop(Self);
        });
        RecoverAny(_ => { });
    }

    public override string PersistenceId => WarmupPersistenceId;

    protected override void OnRecoveryFailure(Exception reason, object? message = null)
    {
        // The journal away at start: the sagas' own recoveries and the readiness probe say so; nobody waits longer for it.
        Context.GetLogger().Warning("Journal warm-up failed after {ElapsedMs} ms: {Reason}", _clock.ElapsedMilliseconds, reason.Message);
        JournalWarmupStatus.Get(Context.System).Done.TrySetResult();
    }
}

/// <summary>Whether this actor system's <see cref="JournalWarmup"/> has ended (warmed, or failed).</summary>
public sealed class JournalWarmupStatus : IExtension
{
    public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public static JournalWarmupStatus Get(ActorSystem system) => system.WithExtension<JournalWarmupStatus, JournalWarmupStatusProvider>();
}

public sealed class JournalWarmupStatusProvider : ExtensionIdProvider<JournalWarmupStatus>
{
    public override JournalWarmupStatus CreateExtension(ExtendedActorSystem system) => new();
}

/// <summary>
/// Holds the Coordinator's start (and so its HTTP API, which starts after it) until the journal is warm, for at most
/// <see cref="Limit"/>: whoever waits for the API to answer (<c>lsm local up</c>) then finds a node whose shards load
/// their remember-entities state in time.
/// </summary>
public sealed class JournalWarmupGate(ActorSystem system) : IHostedService
{
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            await JournalWarmupStatus.Get(system).Done.Task.WaitAsync(Limit, cancellationToken);
        }
        catch (TimeoutException)
        {
            system.Log.Warning("The journal was not warm within {0} s; the API starts anyway", Limit.TotalSeconds);
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
