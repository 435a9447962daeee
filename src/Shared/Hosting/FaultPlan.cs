using System.Diagnostics;
using LiveMigration.Shared.Migration;

namespace LiveMigration.Shared.Hosting;

/// <summary>Where in a step's life a crash point sits.</summary>
public enum FaultMoment
{
    /// <summary>Coordinator: the step's intent is journaled, the command not sent yet.</summary>
    BeforeSend,
    /// <summary>Host: the command arrived, its work has not started.</summary>
    HostReceived,
    /// <summary>Host: the work is done (storage or QEMU changed), the answer not sent yet.</summary>
    HostDone,
    /// <summary>Coordinator: the host's answer arrived, its outcome not journaled yet (the nastiest point).</summary>
    OutcomeReceived,
    /// <summary>Coordinator: the outcome is journaled.</summary>
    OutcomePersisted,
    /// <summary>Coordinator: the migration has ended (completed, failed, cancelled or abandoned); for replay-late only.</summary>
    Ended,
}

public enum FaultAction
{
    /// <summary>SIGKILL the process that reaches the point.</summary>
    KillSelf,
    /// <summary>SIGKILL the QEMU of the step's VM (hosts only).</summary>
    KillQemu,
    /// <summary>Coordinator, at before-send: the step's command goes out twice (a network or proxy that repeats it).</summary>
    Duplicate,
    /// <summary>
    /// Coordinator: the step's first command is kept when sent, and an old copy of it goes out again at the rule's
    /// moment (outcome-persisted: the saga has moved on; ended: the migration is over), as a late delivery would.
    /// The copy is kept in memory: a Coordinator that restarts in between does not replay it.
    /// </summary>
    ReplayLate,
    /// <summary>
    /// SIGSTOP the process that reaches the point: frozen as by a long pause, until the test sends SIGCONT (the
    /// stale-SPM case: the others down it and take over, then it wakes up with the step in hand).
    /// </summary>
    StopSelf,
}

public sealed record FaultRule(string Process, FaultAction Action, MigrationStep Step, FaultMoment Moment);

/// <summary>
/// The fault matrix's crash points, for tests only: <c>LSM_FAULT_PLAN</c> names rules
/// <c>process:action@Step/moment</c> separated by <c>;</c> (e.g. <c>host-1:kill-self@Pivot/host-done</c>,
/// <c>coordinator:kill-self@SyncInternalVolumes/outcome-received</c>, <c>host-1:kill-qemu@WaitMirrorReady/host-received</c>,
/// <c>host-1:stop-self@SyncInternalVolumes/host-received</c>).
/// Off unless <c>LSM_FAULT_PLAN</c> is set, and refused unless <c>LSM_ALLOW_FAULTS=1</c> says this is a test
/// (a Coordinator with an API token, i.e. a production setup, refuses to start with a plan at all).
/// Besides kills, the Coordinator repeats commands: <c>coordinator:duplicate@Pivot/before-send</c> sends the step's
/// command twice, <c>coordinator:replay-late@CloneImageStructure/ended</c> sends an old copy once the migration ended.
/// Each rule fires once per data directory: a marker file written (and fsynced) before the kill keeps the
/// restarted process from dying again at the same point.
/// </summary>
public sealed class FaultPlan
{
    public const string PlanVariable = "LSM_FAULT_PLAN";
    public const string AllowVariable = "LSM_ALLOW_FAULTS";

    private readonly string _process;
    private readonly string _markerDirectory;
    private readonly IReadOnlyList<FaultRule> _rules;

    public static readonly FaultPlan None = new("", "", []);

    /// <summary>This process's plan, set once at start by its Program (a process is one node; in-process test clusters leave it off).</summary>
    public static FaultPlan Current { get; set; } = None;

    private FaultPlan(string process, string markerDirectory, IReadOnlyList<FaultRule> rules)
    {
        _process = process;
        _markerDirectory = markerDirectory;
        _rules = rules;
    }

    public bool IsActive => _rules.Count > 0;
    public IReadOnlyList<FaultRule> Rules => _rules;

    /// <summary>The plan of this process from the environment, or <see cref="None"/>.</summary>
    /// <exception cref="ArgumentException">A plan that does not parse, or one without <c>LSM_ALLOW_FAULTS=1</c>.</exception>
    public static FaultPlan FromEnvironment(string process, string dataDirectory)
    {
        var text = Environment.GetEnvironmentVariable(PlanVariable);
        if (string.IsNullOrWhiteSpace(text)) return None;
        if (Environment.GetEnvironmentVariable(AllowVariable) != "1")
            throw new ArgumentException($"{PlanVariable} is set but {AllowVariable}=1 is not: crash injection is for tests only");
        var rules = Parse(text).Where(r => r.Process == process).ToList();
        return new FaultPlan(process, Path.Combine(dataDirectory, "faults"), rules);
    }

    public static IReadOnlyList<FaultRule> Parse(string text)
    {
        var rules = new List<FaultRule>();
        foreach (var part in text.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            // process:action@Step/moment
            var at = part.Split('@');
            var who = at[0].Split(':');
            var where = at.Length == 2 ? at[1].Split('/') : [];
            if (at.Length != 2 || who.Length != 2 || where.Length != 2
                || !Enum.TryParse<MigrationStep>(where[0], ignoreCase: false, out var step) || !Enum.IsDefined(step))
                throw new ArgumentException($"{PlanVariable}: '{part}' is not process:action@Step/moment");
            var action = who[1] switch
            {
                "kill-self" => FaultAction.KillSelf,
                "kill-qemu" => FaultAction.KillQemu,
                "duplicate" => FaultAction.Duplicate,
                "replay-late" => FaultAction.ReplayLate,
                "stop-self" => FaultAction.StopSelf,
                _ => throw new ArgumentException($"{PlanVariable}: action '{who[1]}' is not kill-self, kill-qemu, stop-self, duplicate or replay-late"),
            };
            var moment = where[1] switch
            {
                "before-send" => FaultMoment.BeforeSend,
                "host-received" => FaultMoment.HostReceived,
                "host-done" => FaultMoment.HostDone,
                "outcome-received" => FaultMoment.OutcomeReceived,
                "outcome-persisted" => FaultMoment.OutcomePersisted,
                "ended" => FaultMoment.Ended,
                _ => throw new ArgumentException($"{PlanVariable}: moment '{where[1]}' is not before-send, host-received, host-done, outcome-received, outcome-persisted or ended"),
            };
            var fits = action switch
            {
                FaultAction.Duplicate => moment == FaultMoment.BeforeSend,
                FaultAction.ReplayLate => moment is FaultMoment.OutcomePersisted or FaultMoment.Ended,
                _ => moment != FaultMoment.Ended,
            };
            if (!fits || action is FaultAction.Duplicate or FaultAction.ReplayLate && who[0] != "coordinator")
                throw new ArgumentException($"{PlanVariable}: '{part}': duplicate is coordinator@Step/before-send, replay-late is " +
                                            "coordinator@Step/outcome-persisted or /ended, and ended is for replay-late only");
            rules.Add(new FaultRule(who[0], action, step, moment));
        }
        return rules;
    }

    /// <summary>
    /// The rule for this point, claimed (its marker written) so it fires once; null when none applies.
    /// <paramref name="killQemu"/> is how this process kills the step's QEMU (hosts); a KillSelf rule kills at once.
    /// </summary>
    public void Hit(MigrationStep step, FaultMoment moment, Action? killQemu = null)
    {
        if (_rules.Count == 0) return;
        foreach (var rule in _rules.Where(r => r.Step == step && r.Moment == moment && r.Action is FaultAction.KillSelf or FaultAction.KillQemu or FaultAction.StopSelf))
        {
            if (!Claim(rule)) continue;
            Console.Error.WriteLine($"fault plan: {_process} {rule.Action} at {step}/{moment}");
            if (rule.Action == FaultAction.KillQemu)
                killQemu?.Invoke();
            else if (rule.Action == FaultAction.StopSelf)
                StopThisProcess(); // returns once SIGCONT thaws it, the step in hand
            else
                Process.GetCurrentProcess().Kill(); // SIGKILL: no shutdown hooks, as a crash
        }
    }

    /// <summary>Whether a rule with <paramref name="action"/> names <paramref name="step"/> at all (the Coordinator keeps a command to replay).</summary>
    public bool Names(FaultAction action, MigrationStep step) => _rules.Any(r => r.Action == action && r.Step == step);

    /// <summary>
    /// For the Coordinator's own actions (duplicate, replay-late): whether the rule for this point fires now, claimed
    /// so it fires once per data directory like a kill.
    /// </summary>
    public bool Fires(FaultAction action, MigrationStep step, FaultMoment moment)
    {
        if (_rules.FirstOrDefault(r => r.Action == action && r.Step == step && r.Moment == moment) is not { } rule || !Claim(rule))
            return false;
        Console.Error.WriteLine($"fault plan: {_process} {action} at {step}/{moment}");
        return true;
    }


    /// <summary>SIGSTOP to this process: every thread stops at once, as in a long pause, not only the one that reached the point.</summary>
    private static void StopThisProcess()
    {
        const int sigStop = 19; // Linux
        if (Kill(Environment.ProcessId, sigStop) != 0)
            throw new InvalidOperationException($"fault plan: SIGSTOP to self failed (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);

    private bool Claim(FaultRule rule)
    {
        Directory.CreateDirectory(_markerDirectory);
        var marker = Path.Combine(_markerDirectory, $"{rule.Process}-{rule.Action}-{rule.Step}-{rule.Moment}");
        try
        {
            using var file = new FileStream(marker, FileMode.CreateNew, FileAccess.Write);
            file.Flush(flushToDisk: true);
            return true;
        }
        catch (IOException)
        {
            return false; // fired before this restart
        }
    }
}
