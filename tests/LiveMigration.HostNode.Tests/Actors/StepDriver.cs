using Akka.Actor;
using Akka.TestKit;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Tests.Actors;

/// <summary>Sends a disk's steps to the host actors as the saga would, and reads their answers.</summary>
internal sealed class StepDriver(VmId vm, DiskPlan disk, MigrationStrategy strategy, long speed = 0, CopyMode mode = CopyMode.Background)
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(20);

    public MigrationId Migration { get; } = MigrationId.New();
    public DiskPlan Disk => disk;

    public OperationId Op(MigrationStep step, int attempt = 1) => new(Migration, step, disk.Image, attempt);

    public ExecuteStep Command(MigrationStep step, int attempt = 1) => new(Op(step, attempt), vm, disk, strategy, speed, mode);

    public void Send(IActorRef host, MigrationStep step, TestProbe from, int attempt = 1) => host.Tell(Command(step, attempt), from.Ref);

    /// <summary>Sends the step and returns its answer; the progress pushed before it goes to <paramref name="progress"/>.</summary>
    public async Task<IHostReply> RunAsync(IActorRef host, MigrationStep step, TestProbe from, int attempt = 1,
        List<OperationProgress>? progress = null, TimeSpan? timeout = null)
    {
        Send(host, step, from, attempt);
        return await AnswerAsync(from, Op(step, attempt), progress, timeout);
    }

    /// <summary>Runs the step and fails the test unless it succeeded.</summary>
    public async Task<OperationSucceeded> SucceedAsync(IActorRef host, MigrationStep step, TestProbe from, int attempt = 1,
        List<OperationProgress>? progress = null, TimeSpan? timeout = null)
    {
        var reply = await RunAsync(host, step, from, attempt, progress, timeout);
        return reply as OperationSucceeded
               ?? throw new Xunit.Sdk.XunitException($"{step} did not succeed: {reply}");
    }

    /// <summary>The next final answer (success or failure) for <paramref name="operation"/>, skipping progress.</summary>
    public static async Task<IHostReply> AnswerAsync(TestProbe from, OperationId operation, List<OperationProgress>? progress = null, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? DefaultTimeout);
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) throw new TimeoutException($"no answer for {operation} in {timeout ?? DefaultTimeout}");
            var message = await from.ReceiveOneAsync(left) ?? throw new TimeoutException($"no answer for {operation} in {timeout ?? DefaultTimeout}");
            switch (message)
            {
                case OperationProgress p when p.Operation == operation:
                    progress?.Add(p);
                    break;
                case IHostReply reply when reply.Operation == operation:
                    return reply;
                default:
                    throw new Xunit.Sdk.XunitException($"unexpected message while waiting for {operation}: {message}");
            }
        }
    }

    /// <summary>Fails if a final answer arrives within <paramref name="window"/> (progress is fine).</summary>
    public static async Task ExpectNoAnswerAsync(TestProbe from, TimeSpan window)
    {
        await Task.Delay(window);
        while (from.HasMessages)
        {
            var message = await from.ReceiveOneAsync(TimeSpan.Zero);
            Assert.IsType<OperationProgress>(message);
        }
    }
}
