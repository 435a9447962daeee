using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Tests.Migration;

/// <summary>Plays the actor's part without an actor: decide, keep the events as a journal, apply them, move a fake clock.</summary>
public sealed class SagaDriver
{
    public static readonly DateTimeOffset T0 = new(2025, 1, 1, 12, 0, 0, TimeSpan.Zero);

    public MigrationId Id { get; } = MigrationId.New();
    public VmId Vm { get; } = VmId.New();
    public DomainId Source { get; } = DomainId.New();
    public DomainId Destination { get; } = DomainId.New();
    public List<ImageId> Images { get; } = [];
    public MigrationState State { get; private set; }
    public List<IMigrationEvent> Journal { get; } = [];
    public DateTimeOffset Now { get; private set; } = T0;

    public SagaDriver(int disks = 1)
    {
        State = MigrationState.Initial(Id);
        for (var i = 0; i < disks; i++) Images.Add(ImageId.New());
    }

    public ImageId Image => Images[0];

    public MigrationRequest Request(MigrationStrategy strategy = MigrationStrategy.PreCopy, int parallel = 1, RetryPolicy? retry = null, long bandwidth = 0) =>
        new(Vm, Images.Select(i => new DiskMoveRequest(i, Destination)).ToValueList(), strategy, bandwidth,
            CopyMode.Background, parallel, DeleteSource: true, retry ?? new RetryPolicy(3, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30)));

    public ValidationFacts Facts(bool running = true, long free = 1L << 40) =>
        new(new VmFacts(Vm, running, Images.Select(i => new DiskFacts(i, Source, 1L << 30)).ToValueList()),
            [new DomainFacts(Source, true, free), new DomainFacts(Destination, true, free)],
            ValueList<ImageId>.Empty);

    public Decision Send(IMigrationCommand command)
    {
        var decision = MigrationDecider.Decide(State, command, Now);
        foreach (var e in decision.Events)
        {
            Journal.Add(e);
            State = MigrationState.Apply(State, e);
        }
        return decision;
    }

    public void Advance(TimeSpan by) => Now += by;

    /// <summary>Start and admit, as the actor and the limits would.</summary>
    public SagaDriver Begin(MigrationStrategy strategy = MigrationStrategy.PreCopy, int parallel = 1, RetryPolicy? retry = null, long bandwidth = 0)
    {
        Assert.False(Send(new StartMigration(Id, Request(strategy, parallel, retry, bandwidth), Facts())).Refused);
        Assert.False(Send(new AdmitMigration(Id)).Refused);
        return this;
    }

    public IReadOnlyList<MigrationAction> Actions => MigrationActions.Next(State);
    public IReadOnlyList<SendStep> Sends => Actions.OfType<SendStep>().ToList();

    public SendStep InFlight(ImageId image) => Sends.Single(s => s.Disk.Image == image);
    public SendStep InFlight() => InFlight(Image);

    public Decision Succeed(ImageId image, long bytes = 0) =>
        Send(new ReportStepSucceeded(Id, InFlight(image).Operation, new StepOutcome(bytes)));
    public Decision Succeed() => Succeed(Image);

    /// <summary>Answers the <see cref="MigrationStep.ProbeSwitch"/> in flight with what the host found.</summary>
    public Decision Probed(SwitchFinding finding) =>
        Send(new ReportStepSucceeded(Id, InFlight(Image).Operation, new StepOutcome(Detail: $"found {finding}", Switch: finding)));

    public Decision Fail(ImageId image, string code, bool transient = false) =>
        Send(new ReportStepFailed(Id, InFlight(image).Operation, code, $"injected {code}", transient));
    public Decision Fail(string code, bool transient = false) => Fail(Image, code, transient);

    /// <summary>Answers every step of one disk with success until it has none in flight; returns the steps it answered.</summary>
    public List<MigrationStep> SucceedAll(ImageId image)
    {
        var steps = new List<MigrationStep>();
        while (Sends.FirstOrDefault(s => s.Disk.Image == image) is { } send)
        {
            steps.Add(send.Step);
            Succeed(image);
        }
        return steps;
    }

    public List<MigrationStep> StepsStarted(ImageId image) =>
        Journal.OfType<StepStarted>().Where(s => s.Image == image).Select(s => s.Step).ToList();
}
